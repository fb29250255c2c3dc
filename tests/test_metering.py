"""Metering on real databases (SQLite and PostgreSQL): per-second charges up
to a persisted position, clock jumps, closing runs, the grace period."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from sqlalchemy import select

from herder.ledger import Ledger, TickResult
from herder.ledger.models import Charge
from herder.metering import Meter
from herder.runtime import ContainerInfo

from .conftest import make_settings

pytestmark = pytest.mark.db

T0 = 1_700_000_000


async def charge_of(ledger: Ledger, charge_id: int) -> tuple[int, int]:
    """(seconds, credits) of one charge row."""
    async with ledger.read() as conn:
        row = (
            await conn.execute(select(Charge.seconds, Charge.credits).where(Charge.id == charge_id))
        ).one()
    return int(row.seconds), int(row.credits)


async def _register(ledger: Ledger, subject: str, name: str, *, at: int = T0, **kw: Any) -> Any:
    return await ledger.register_workload(
        instance=kw.pop("instance", "i1"),
        kind=kw.pop("kind", "daemon"),
        subject=subject,
        jti="jti-" + name,
        name=name,
        container_name=f"{name}-jti",
        container_id="cid-" + name,
        image="img",
        address="172.17.0.9",
        ports={"8080": 32001, "80": 32000},
        started_at=at,
        **kw,
    )


async def test_tick_charges_each_second_once(ledger: Ledger) -> None:
    await ledger.grant_once("a@x", "g1", 100)
    await ledger.grant_once("b@x", "g2", 100)
    run = await _register(ledger, "a@x", "one")
    await _register(ledger, "a@x", "two")
    await _register(ledger, "b@x", "three")
    other = await _register(ledger, "b@x", "other-herder", instance="i2")

    result = await ledger.meter_tick("i1", T0 + 5, rate=2)
    assert result.workloads == 3 and result.exhausted == []
    assert (await ledger.balance("a@x")).remaining == 100 - 2 * 5 * 2
    assert (await ledger.balance("b@x")).remaining == 100 - 5 * 2
    assert await charge_of(ledger, run.charge_id) == (5, 10)
    assert await charge_of(ledger, other.charge_id) == (0, 0)  # another herder's

    # The same second again charges nothing; a late tick charges what it missed.
    assert (await ledger.meter_tick("i1", T0 + 5, rate=2)).workloads == 0
    await ledger.meter_tick("i1", T0 + 8, rate=2)
    assert await charge_of(ledger, run.charge_id) == (8, 16)
    for subject in ("a@x", "b@x"):
        assert await ledger.balance(subject) == await ledger.audit(subject)


async def test_registry_row_is_the_contract(ledger: Ledger) -> None:
    await ledger.grant_once("a@x", "g1", 100)
    await _register(ledger, "a@x", "web")
    row = await ledger.running_workload("i1", "daemon", "web-jti")
    assert row is not None
    assert (row.kind, row.subject, row.name, row.container_id) == (
        "daemon",
        "a@x",
        "web",
        "cid-web",
    )
    assert row.state == "running" and row.address == "172.17.0.9"
    assert list(json.loads(row.ports).items()) == [("8080", 32001), ("80", 32000)]
    assert await ledger.running_workload("i1", "daemon", "web") is None  # exact names only
    assert await ledger.running_workload("i2", "daemon", "web-jti") is None


async def test_clock_jumps_neither_charge_an_hour_nor_a_negative_amount(ledger: Ledger) -> None:
    await ledger.grant_once("a@x", "g1", 10_000)
    run = await _register(ledger, "a@x", "one")
    await ledger.meter_tick("i1", T0 + 1, rate=1)
    # One real second passed, but the wall clock jumped an hour forward.
    await ledger.meter_tick("i1", T0 + 3602, rate=1, cap=2, step=3600)
    assert await charge_of(ledger, run.charge_id) == (2, 2)
    # And back again.
    await ledger.meter_tick("i1", T0 + 3, rate=1, cap=2, step=-3600)
    assert await charge_of(ledger, run.charge_id) == (3, 3)
    # A clock behind the persisted position charges nothing, never a negative amount.
    await ledger.meter_tick("i1", T0 - 50, rate=1, cap=2)
    assert await charge_of(ledger, run.charge_id) == (3, 3)
    assert (await ledger.balance("a@x")).remaining == 10_000 - 3


async def test_meter_follows_elapsed_time_across_clock_steps(ledger: Ledger) -> None:
    await ledger.grant_once("a@x", "g1", 10_000)
    run = await _register(ledger, "a@x", "one")
    clock = {"wall": float(T0), "mono": 100.0}
    meter = Meter(
        make_settings_in_memory(),
        ledger,
        RecordingRuntime(),
        "i1",
        clock=lambda: clock["wall"],
        monotonic=lambda: clock["mono"],
    )
    await meter.tick()
    for wall_step in (1, 3601, 1, -7199, 1):  # forward an hour, back two hours
        clock["wall"] += wall_step
        clock["mono"] += 1
        await meter.tick()
    assert await charge_of(ledger, run.charge_id) == (5, 5)


async def test_close_charges_up_to_the_end_and_is_idempotent(ledger: Ledger) -> None:
    await ledger.grant_once("a@x", "g1", 100)
    run = await _register(ledger, "a@x", "one")
    await ledger.meter_tick("i1", T0 + 2, rate=1)
    closed = await ledger.close_workload("i1", "cid-one", at=T0 + 5, rate=1)
    assert closed is not None and closed.state == "stopped" and closed.stopped_at == T0 + 5
    assert await ledger.close_workload("i1", "cid-one", at=T0 + 9, rate=1) is None
    # A late event time before the metered position charges nothing more.
    await ledger.meter_tick("i1", T0 + 20, rate=1)
    assert await charge_of(ledger, run.charge_id) == (5, 5)
    assert await ledger.running_workload("i1", "daemon", "one-jti") is None
    assert await ledger.balance("a@x") == await ledger.audit("a@x")


async def test_tick_reports_daemons_of_exhausted_subjects(ledger: Ledger) -> None:
    await ledger.grant_once("poor@x", "g1", 3)
    await ledger.grant_once("rich@x", "g2", 1000)
    await _register(ledger, "poor@x", "p")
    await _register(ledger, "rich@x", "r")
    assert (await ledger.meter_tick("i1", T0 + 2, rate=1)).exhausted == []
    exhausted = (await ledger.meter_tick("i1", T0 + 3, rate=1)).exhausted
    assert [w.container_id for w in exhausted] == ["cid-p"]


# -- the loop, with fakes for what it does not test ---------------------------


def make_settings_in_memory(**overrides: Any) -> Any:
    import tempfile
    from pathlib import Path

    return make_settings(Path(tempfile.mkdtemp()) / "data", **overrides)


class RecordingRuntime:
    """A runtime with some running daemons; records what was stopped."""

    def __init__(self, running: list[str] | None = None) -> None:
        self.running = list(running or [])
        self.stopped: list[str] = []

    async def list(self, labels: dict[str, str], *, all: bool = True) -> list[ContainerInfo]:
        return [
            ContainerInfo(id=c, name=c, image="img", state="running", status="")
            for c in self.running
        ]

    async def stop(self, ref: str, *, timeout: float = 5) -> None:
        self.stopped.append(ref)
        if ref in self.running:
            self.running.remove(ref)


class UnreachableDatabaseLedger:
    """A ledger whose database never answers."""

    def __init__(self) -> None:
        self.attempts = 0

    async def meter_tick(self, *args: Any, **kwargs: Any) -> Any:
        self.attempts += 1
        raise ConnectionRefusedError("database down")


async def test_daemons_stop_when_charges_fail_beyond_the_grace_period() -> None:
    runtime = RecordingRuntime(running=["d1", "d2"])
    ledger = UnreachableDatabaseLedger()
    recovered: list[bool] = []

    async def recover() -> None:
        recovered.append(True)

    clock = {"mono": 0.0}
    meter = Meter(
        make_settings_in_memory(metering_grace=5),
        ledger,  # type: ignore[arg-type]
        runtime,  # type: ignore[arg-type]
        "i1",
        recover=recover,
        monotonic=lambda: clock["mono"],
    )
    for _ in range(5):
        await meter.step()
        clock["mono"] += 1
    assert runtime.stopped == [] and ledger.attempts == 5  # still within the grace period
    await meter.step()
    clock["mono"] += 1
    await meter.step()
    assert sorted(runtime.stopped) == ["d1", "d2"]
    assert recovered == []  # the database is still down


async def test_a_restarted_container_gets_one_new_run(ledger: Ledger) -> None:
    await ledger.grant_once("a@x", "g1", 100)
    await _register(ledger, "a@x", "one")
    assert await ledger.resume_workload("i1", "cid-one", address="x", ports={}) is None  # open
    await ledger.close_workload("i1", "cid-one", at=T0 + 2, rate=1)
    resumed = await ledger.resume_workload(
        "i1", "cid-one", address="172.17.0.5", ports={"8080": 1, "80": 2}
    )
    assert resumed is not None and resumed.state == "running" and resumed.address == "172.17.0.5"
    assert resumed.charge_id is not None and resumed.name == "one"
    assert await ledger.resume_workload("i1", "cid-one", address="x", ports={}) is None
    assert await ledger.resume_workload("i1", "cid-never", address="x", ports={}) is None
    assert [w.id for w in await ledger.running_workloads("i1")] == [resumed.id]


class CountingLedger:
    def __init__(self) -> None:
        self.ticks = 0

    async def meter_tick(self, *args: Any, **kwargs: Any) -> Any:
        self.ticks += 1
        return TickResult(workloads=0, exhausted=[])


async def test_metering_starts_only_after_the_first_reconcile() -> None:
    """Until the registry has been reconciled with Docker, a tick could charge a
    run whose container died while the herder was down: the loop waits."""
    ledger = CountingLedger()
    ready = asyncio.Event()
    meter = Meter(
        make_settings_in_memory(metering_interval="0.05"),
        ledger,  # type: ignore[arg-type]
        RecordingRuntime(),  # type: ignore[arg-type]
        "i1",
        ready=ready,
    )
    task = asyncio.create_task(meter.run())
    try:
        await asyncio.sleep(0.3)
        assert ledger.ticks == 0
        ready.set()
        for _ in range(50):
            if ledger.ticks >= 2:
                break
            await asyncio.sleep(0.05)
        assert ledger.ticks >= 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
