"""Metering on real databases (SQLite and PostgreSQL): per-second charges up
to a persisted position, clock jumps, closing runs, the grace period."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest

from herder.ledger import Ledger, TickResult
from herder.metering import Meter
from herder.runtime import ContainerInfo

from .conftest import make_settings

pytestmark = pytest.mark.db

T0 = 1_700_000_000


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
    assert await ledger.charge_of(run.charge_id) == (5, 10)
    assert await ledger.charge_of(other.charge_id) == (0, 0)  # another herder's

    # The same second again charges nothing; a late tick charges what it missed.
    assert (await ledger.meter_tick("i1", T0 + 5, rate=2)).workloads == 0
    await ledger.meter_tick("i1", T0 + 8, rate=2)
    assert await ledger.charge_of(run.charge_id) == (8, 16)
    for subject in ("a@x", "b@x"):
        assert await ledger.balance(subject) == await ledger.audit(subject)


async def test_usage_shows_what_running_runs_have_accrued(ledger: Ledger) -> None:
    await ledger.grant_once("a@x", "g1", 100)
    run = await _register(ledger, "a@x", "one")
    await ledger.meter_tick("i1", T0 + 1, rate=1)
    await ledger.meter_tick("i1", T0 + 4, rate=1)
    usage = await ledger.usage("a@x", 10)
    assert usage.balance == await ledger.balance("a@x") and usage.balance.remaining == 96
    assert [(c.id, c.seconds, c.credits) for c in usage.charges] == [(run.charge_id, 4, 4)]
    assert [w.container_id for w in usage.running] == ["cid-one"]
    nobody = await ledger.usage("nobody@x", 10)  # no account: nothing granted or charged
    assert nobody.balance == await ledger.balance("nobody@x")
    assert (nobody.balance.granted, nobody.balance.charged, nobody.running, nobody.charges) == (
        0, 0, [], []
    )  # fmt: skip


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
    assert await ledger.charge_of(run.charge_id) == (2, 2)
    # And back again.
    await ledger.meter_tick("i1", T0 + 3, rate=1, cap=2, step=-3600)
    assert await ledger.charge_of(run.charge_id) == (3, 3)
    # A clock behind the persisted position charges nothing, never a negative amount.
    await ledger.meter_tick("i1", T0 - 50, rate=1, cap=2)
    assert await ledger.charge_of(run.charge_id) == (3, 3)
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
    assert await ledger.charge_of(run.charge_id) == (5, 5)


async def test_close_charges_up_to_the_end_and_is_idempotent(ledger: Ledger) -> None:
    await ledger.grant_once("a@x", "g1", 100)
    run = await _register(ledger, "a@x", "one")
    await ledger.meter_tick("i1", T0 + 2, rate=1)
    closed = await ledger.close_workload("i1", "cid-one", at=T0 + 5, rate=1)
    assert closed is not None and closed.state == "stopped" and closed.stopped_at == T0 + 5
    assert await ledger.close_workload("i1", "cid-one", at=T0 + 9, rate=1) is None
    # A late event time before the metered position charges nothing more.
    await ledger.meter_tick("i1", T0 + 20, rate=1)
    assert await ledger.charge_of(run.charge_id) == (5, 5)
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


async def test_exhaustion_is_found_in_the_tick_the_balance_reaches_zero(ledger: Ledger) -> None:
    await ledger.grant_once("poor@x", "g1", 10)
    await ledger.grant_once("rich@x", "g2", 10**6)
    await _register(ledger, "poor@x", "p1")
    await _register(ledger, "poor@x", "p2")
    await _register(ledger, "rich@x", "r")
    for second in range(1, 5):
        assert (await ledger.meter_tick("i1", T0 + second, rate=1)).exhausted == []
    exhausted = (await ledger.meter_tick("i1", T0 + 5, rate=1)).exhausted
    assert sorted(w.container_id for w in exhausted) == ["cid-p1", "cid-p2"]
    assert (await ledger.balance("poor@x")).remaining == 0


async def test_exhaustion_is_found_when_another_herder_catches_up(ledger: Ledger) -> None:
    """Two herders on one ledger; one is down for a minute and charges that
    minute at once when it is back: that tick finds the subject exhausted."""
    await ledger.grant_once("a@x", "g1", 100)
    await _register(ledger, "a@x", "here", instance="i1")
    await _register(ledger, "a@x", "there", instance="i2")
    await ledger.meter_tick("i2", T0 + 1, rate=1)
    for second in range(1, 60):
        assert (await ledger.meter_tick("i1", T0 + second, rate=1)).exhausted == []
    assert (await ledger.balance("a@x")).remaining == 100 - 59 - 1
    exhausted = (await ledger.meter_tick("i2", T0 + 60, rate=1)).exhausted  # back, uncapped
    assert [w.container_id for w in exhausted] == ["cid-there"]
    exhausted = (await ledger.meter_tick("i1", T0 + 60, rate=1)).exhausted
    assert [w.container_id for w in exhausted] == ["cid-here"]


async def test_a_minion_charge_brings_the_next_check_forward(ledger: Ledger) -> None:
    await ledger.grant_once("a@x", "g1", 100)
    await _register(ledger, "a@x", "web")
    assert (await ledger.meter_tick("i1", T0 + 1, rate=1)).exhausted == []
    assert await ledger.charge("a@x", "g1", "minion", "python", 95, 95) == 4
    assert (await ledger.meter_tick("i1", T0 + 4, rate=1)).exhausted == []
    exhausted = (await ledger.meter_tick("i1", T0 + 5, rate=1)).exhausted
    assert [w.container_id for w in exhausted] == ["cid-web"]


async def test_upgrade_to_the_meter_clock_charges_nothing_twice(database_url: str) -> None:
    """A database at 0002 with running runs charged per row: after the upgrade
    the next tick charges each run from where it was, and the downgrade
    writes the accrual back into the charge rows."""
    from alembic import command
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from herder.ledger import migrate

    config = migrate.alembic_config(database_url)
    await asyncio.to_thread(command.upgrade, config, "0002")
    engine = create_async_engine(database_url)
    run = (
        "INSERT INTO workloads (instance, kind, subject, jti, name, container_name,"
        " container_id, image, address, ports, state, metered, started_at, metered_until,"
        " charge_id) VALUES ('i1', 'daemon', 'a@x', 'j', :name, :name, :name, 'img', '',"
        " '{}', 'running', true, :at, :at, :charge)"
    )
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO grants (jti, subject, credits) VALUES ('g', 'a@x', 100)")
        )
        await conn.execute(
            text("INSERT INTO accounts (subject, granted, charged) VALUES ('a@x', 100, 5)")
        )
        await conn.execute(
            text(
                "INSERT INTO charges (id, subject, jti, kind, workload, seconds, credits)"
                " VALUES (1, 'a@x', 'j', 'daemon', 'old', 5, 5),"
                " (2, 'a@x', 'j', 'daemon', 'young', 0, 0)"
            )
        )
        await conn.execute(text(run), {"name": "old", "at": T0, "charge": 1})
        await conn.execute(text(run), {"name": "young", "at": T0 + 7, "charge": 2})
        await conn.execute(
            text("INSERT INTO meter_positions (instance, metered_until) VALUES ('i1', :at)"),
            {"at": T0 + 5},
        )
    ledger = await Ledger.open(database_url)  # upgrades to head
    try:
        assert await ledger.charge_of(1) == (5, 5)
        assert (await ledger.balance("a@x")).remaining == 95
        result = await ledger.meter_tick("i1", T0 + 8, rate=1)
        assert result.workloads == 2
        assert await ledger.charge_of(1) == (8, 8)
        assert await ledger.charge_of(2) == (1, 1)
        assert (await ledger.balance("a@x")).remaining == 91
        assert await ledger.audit("a@x") == await ledger.balance("a@x")
    finally:
        await ledger.close()
    await asyncio.to_thread(command.downgrade, config, "0002")
    async with engine.connect() as conn:
        charges = (await conn.execute(text("SELECT id, seconds FROM charges ORDER BY id"))).all()
        charged = (await conn.execute(text("SELECT charged FROM accounts"))).scalar_one()
    await engine.dispose()
    assert [tuple(row) for row in charges] == [(1, 8), (2, 1)] and charged == 9


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


# -- the meter clock against the per-run model it replaces ----------------------


class PerRunModel:
    """The metering rules written per run, the way the tick used to apply them:
    each tick charges every due run `min(now - max(own, position), cap)` seconds."""

    def __init__(self) -> None:
        self.position: dict[str, int] = {}
        self.runs: dict[str, dict[str, Any]] = {}  # container id -> run
        self.granted: dict[str, int] = {}
        self.charged: dict[str, int] = {}

    def grant(self, subject: str, credits: int) -> None:
        self.granted[subject] = self.granted.get(subject, 0) + credits

    def charge(self, subject: str, credits: int) -> None:
        self.charged[subject] = self.charged.get(subject, 0) + credits

    def remaining(self, subject: str) -> int:
        return self.granted.get(subject, 0) - self.charged.get(subject, 0)

    def register(self, cid: str, instance: str, subject: str, at: int) -> None:
        self.runs[cid] = {
            "instance": instance,
            "subject": subject,
            "own": at,
            "seconds": 0,
            "credits": 0,
            "running": True,
        }

    def tick(self, instance: str, now: int, rate: int, cap: int | None, step: int) -> set[str]:
        position = self.position.get(instance, 0)
        mine = [r for r in self.runs.values() if r["running"] and r["instance"] == instance]
        if step:
            for run in mine:
                run["own"] = min(run["own"] + step, now)
            position = min(position + step, now)
        due_subjects = set()
        for run in mine:
            since = max(run["own"], position)
            if since < now:
                seconds = now - since if cap is None else min(now - since, cap)
                run["seconds"] += seconds
                run["credits"] += seconds * rate
                self.charge(run["subject"], seconds * rate)
                due_subjects.add(run["subject"])
        self.position[instance] = max(position, now)
        broke = {s for s in due_subjects if self.remaining(s) <= 0}
        return {cid for cid, r in self.runs.items() if r in mine and r["subject"] in broke}

    def close(self, cid: str, at: int, rate: int) -> None:
        run = self.runs[cid]
        since = max(run["own"], self.position.get(run["instance"], 0))
        end = max(since, at)
        run["seconds"] += end - since
        run["credits"] += (end - since) * rate
        self.charge(run["subject"], (end - since) * rate)
        run["running"] = False


async def test_the_meter_clock_charges_what_per_run_metering_charged(ledger: Ledger) -> None:
    """Random ticks (late, repeated, capped, clock steps, two herders, a rate
    change), closes, grants and minion charges: every charge row, balance and
    audit agrees with the per-run rules, and every run the per-run tick would
    have reported exhausted is reported in the same tick."""
    import random

    rnd = random.Random(14)
    model = PerRunModel()
    subjects = [f"s{i}@x" for i in range(4)]
    for i, subject in enumerate(subjects):
        await ledger.grant_once(subject, f"g{i}", 40 + 30 * i)
        model.grant(subject, 40 + 30 * i)
    wall = T0
    last_tick: dict[str, int] = {}
    charge_ids: dict[str, int] = {}
    checked_closed: set[str] = set()
    stats = {"exhausted": 0, "capped": 0}
    rate = 1
    for op in range(120):
        if op == 60:
            rate = 2
        choice = rnd.random()
        running = [c for c, r in model.runs.items() if r["running"]]
        if choice < 0.2 and len(running) < 10:
            subject = rnd.choice([s for s in subjects if model.remaining(s) > 0] or subjects)
            instance = rnd.choice(["i1", "i1", "i2"])
            cid = f"c{op}"
            run = await _register(ledger, subject, cid, at=wall, instance=instance)
            model.register("cid-" + cid, instance, subject, wall)
            charge_ids["cid-" + cid] = run.charge_id
        elif choice < 0.3 and running:
            cid = rnd.choice(running)
            at = wall - rnd.randint(0, 3)
            instance = model.runs[cid]["instance"]
            assert await ledger.close_workload(instance, cid, at=at, rate=rate) is not None
            model.close(cid, at, rate)
        elif choice < 0.35:
            subject = rnd.choice(subjects)
            await ledger.grant_once(subject, f"g-op{op}", 25)
            model.grant(subject, 25)
        elif choice < 0.4:
            subject = rnd.choice(subjects)
            await ledger.charge(subject, f"m{op}", "minion", "python", 1, 3)
            model.charge(subject, 3)
        else:
            instance = "i2" if rnd.random() < 0.3 else "i1"
            wall += rnd.choice([0, 1, 1, 1, 2, 5])
            step = 0
            if rnd.random() < 0.05:
                step = rnd.choice([-3600, 3600])
            now = wall + step
            previous = last_tick.get(instance)
            cap = None if previous is None or rnd.random() < 0.1 else wall - previous + 1
            if cap is not None and rnd.random() < 0.2:
                cap = 1  # less time passed than the wall clock says
            last_tick[instance] = wall
            stats["capped"] += cap is not None and cap < now - model.position.get(instance, now)
            result = await ledger.meter_tick(instance, now, rate, cap=cap, step=step)
            expected = model.tick(instance, now, rate, cap, step)
            reported = {w.container_id for w in result.exhausted}
            assert expected <= reported, (op, expected, reported)
            stats["exhausted"] += len(expected)
            for workload in result.exhausted:
                assert model.remaining(workload.subject) <= 0
                assert workload.container_id is not None
                await ledger.close_workload(instance, workload.container_id, at=now, rate=rate)
                model.close(workload.container_id, now, rate)
            if step:  # the wall clock stepped: so does every later time
                wall = now
                last_tick = {k: v + step for k, v in last_tick.items()}
        for cid, run in model.runs.items():
            if run["running"] or cid not in checked_closed:
                assert await ledger.charge_of(charge_ids[cid]) == (
                    run["seconds"],
                    run["credits"],
                ), op
                if not run["running"]:
                    checked_closed.add(cid)
        for subject in subjects:
            balance = await ledger.balance(subject)
            assert balance.remaining == model.remaining(subject), (op, subject)
            assert await ledger.audit(subject) == balance
    assert await ledger.total_charged() == sum(model.charged.values())
    assert stats["exhausted"] >= 3 and stats["capped"] >= 3, stats  # the cases were met


async def test_replicas_of_one_instance_meter_through_one_lease(ledger: Ledger) -> None:
    """Only the lease holder ticks (once it has reconciled); when it stops,
    another takes over and charges from the shared position: each second
    once, none lost."""
    from herder.leadership import Leadership

    await ledger.grant_once("a@x", "g1", 10_000)
    run = await _register(ledger, "a@x", "one")
    clock = {"wall": float(T0), "mono": 100.0}
    ready = asyncio.Event()
    ready.set()

    def replica(holder: str) -> tuple[Leadership, Meter]:
        leadership = Leadership(
            ledger,
            "meter:i1",
            holder,
            ttl=5,
            clock=lambda: clock["wall"],
            monotonic=lambda: clock["mono"],
        )
        meter = Meter(
            make_settings_in_memory(),
            ledger,
            RecordingRuntime(),
            "i1",
            clock=lambda: clock["wall"],
            monotonic=lambda: clock["mono"],
            leadership=leadership,
            ready=ready,
        )
        return leadership, meter

    async def second_passes(*replicas: tuple[Leadership, Meter]) -> None:
        clock["wall"] += 1
        clock["mono"] += 1
        for leadership, meter in replicas:
            await leadership.renew()
            await meter.step()

    (lead1, first), (lead2, second) = replica("r1"), replica("r2")
    for _ in range(4):
        await second_passes((lead1, first), (lead2, second))
    assert (first.ticks, second.ticks) == (4, 0)
    assert await ledger.charge_of(run.charge_id) == (4, 4)
    # r1 dies (no release): r2 waits out the lease, then charges the gap once.
    for _ in range(6):
        await second_passes((lead2, second))
    assert second.ticks == 1
    assert await ledger.charge_of(run.charge_id) == (10, 10)
    # Not reconciled (yet) in its term: a holder does not tick.
    ready.clear()
    await second_passes((lead2, second))
    assert second.ticks == 1
    ready.set()
    await lead2.release()
    assert not lead2.held
    await second_passes((lead1, first))  # released: r1 takes it at once
    assert first.ticks == 5
    assert await ledger.charge_of(run.charge_id) == (12, 12)
