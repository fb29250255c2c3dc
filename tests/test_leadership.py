"""One reconciler of two leads (`herder.leadership`): replicas of one
instance on one engine and one ledger, as on a Swarm. Only the leader
closes the run of a daemon removed by hand; when it dies (no release),
the other takes the lease over and closes the next one."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import asyncpg
import pytest

from herder import reconcile
from herder.leadership import Leadership
from herder.ledger import Ledger
from herder.reconcile import Reconciler
from herder.runtime import ContainerInfo, DockerRuntime
from herder.runtime.base import RuntimeEvent

from .conftest import INSTANCE_PREFIX, POSTGRES_URL, eventually, make_settings
from .images import ensure_busybox_image


@pytest.fixture
async def ledger() -> AsyncIterator[Ledger]:
    """PostgreSQL, the cluster's database: a clean schema."""
    conn = await asyncpg.connect(POSTGRES_URL.replace("postgresql+asyncpg", "postgresql"))
    await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    await conn.close()
    ledger = await Ledger.open(POSTGRES_URL)
    yield ledger
    await ledger.close()


@pytest.mark.docker
async def test_only_the_leader_reconciles_and_another_takes_over(
    ledger: Ledger, docker: aiodocker.Docker, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path / "data")
    instance = f"{INSTANCE_PREFIX}lead-{secrets.token_hex(3)}"
    image = await ensure_busybox_image()
    runtime = DockerRuntime(settings.docker_url)
    closed: dict[str, list[str]] = {"one": [], "two": []}
    tasks: dict[str, list[asyncio.Task[None]]] = {}
    replicas: dict[str, tuple[Leadership, Reconciler]] = {}
    for name in closed:
        leadership = Leadership(ledger, f"meter:{instance}", name, every=0.5)
        reconciler = Reconciler(settings, ledger, runtime, instance, leadership=leadership)
        reconciler.on_closed.append(closed[name].append)
        replicas[name] = (leadership, reconciler)
        tasks[name] = [
            asyncio.create_task(leadership.run()),
            asyncio.create_task(reconciler.run()),
        ]

    async def daemon(name: str) -> str:
        container = await docker.containers.run(
            {
                "Image": image,
                "Cmd": ["sleep", "600"],
                "Labels": {
                    "herder.managed": "1",
                    "herder.instance": instance,
                    "herder.kind": "daemon",
                },
            },
            name=f"{instance}-{name}",
        )
        await ledger.register_workload(
            instance=instance,
            kind="daemon",
            subject="lead@example.org",
            jti="j",
            name=name,
            container_name=f"{instance}-{name}",
            container_id=container.id,
            image=image,
            address="",
            ports={},
        )
        return str(container.id)

    try:

        async def led() -> str | None:
            leaders = [n for n, (_, r) in replicas.items() if r.reconciled.is_set()]
            return leaders[0] if len(leaders) == 1 else None

        await eventually(led, 10, "one replica leads and has reconciled")
        first = await led()
        assert first is not None
        other = "two" if first == "one" else "one"
        assert not replicas[other][0].held
        gone = await daemon("first")
        await docker.containers.container(gone).delete(force=True)

        async def closed_by(name: str) -> bool:
            return bool(closed[name])

        await eventually(lambda: closed_by(first), 10, "the leader closes the run")
        await asyncio.sleep(1)
        assert closed == {first: [f"{instance}-first"], other: []}
        assert await ledger.running_workloads(instance) == []
        # The leader dies without giving the lease up: the other leads once it expires.
        for task in tasks[first]:
            task.cancel()
        await asyncio.gather(*tasks[first], return_exceptions=True)
        again = await daemon("second")
        await docker.containers.container(again).delete(force=True)

        async def none_running() -> bool:
            return await ledger.running_workloads(instance) == []

        # (removed before or after it took over: by its first reconcile, or by an event)
        await eventually(none_running, 15, "the new leader closes the next run")

        async def reconciled() -> bool:
            return replicas[other][1].reconciled.is_set()

        await eventually(reconciled, 10, "the new leader has reconciled")
        assert replicas[other][0].terms == 1
    finally:
        for running in tasks.values():
            for task in running:
                task.cancel()
        await asyncio.gather(*(t for ts in tasks.values() for t in ts), return_exceptions=True)
        await runtime.close()


class OneServiceRuntime:
    """A Swarm-like runtime with one running service whose current task
    started at `task_started` (pure logic of the reconcile around it)."""

    def __init__(self, service_id: str, name: str, task_started: float) -> None:
        self.info = ContainerInfo(
            id=service_id,
            name=name,
            image="img",
            state="running",
            status="",
            labels={"herder.kind": "daemon"},
            ports={"80": 30001},
            address="10.0.1.7",
            started_at=task_started,
        )

    async def list(self, labels: dict[str, str], *, all: bool = True) -> list[ContainerInfo]:
        return [self.info]

    async def inspect(self, ref: str) -> ContainerInfo | None:
        return self.info if ref == self.info.id else None

    async def events(
        self, labels: dict[str, str], *, since: float | None = None
    ) -> AsyncIterator[RuntimeEvent]:
        """A poll that saw no change (its first look is only a baseline)."""
        await asyncio.Event().wait()
        yield RuntimeEvent(action="start", id=self.info.id, labels={})  # never reached


async def test_a_task_replaced_while_nobody_watched_gets_a_new_run(ledger: Ledger) -> None:
    """Every replica was down while the Swarm moved a daemon: the run ends,
    and a new one begins, when the new task started; charged once."""
    now = int(time.time())
    await ledger.grant_once("moved@x", "g", 1000)
    run = await ledger.register_workload(
        instance="i",
        kind="daemon",
        subject="moved@x",
        jti="j",
        name="web",
        container_name="web-j",
        container_id="svc1",
        image="img",
        address="10.0.1.5",
        ports={"80": 30000},
        started_at=now - 60,
    )
    runtime = OneServiceRuntime("svc1", "web-j", now - 20)
    reconciler = Reconciler(make_settings(Path(tempfile.mkdtemp())), ledger, runtime, "i")  # type: ignore[arg-type]
    report = await reconciler.reconcile()
    assert (report.closed, report.resumed) == (["web-j"], ["web-j"])
    rows = await ledger.running_workloads("i")
    assert len(rows) == 1 and rows[0].id != run.id
    assert (rows[0].started_at, rows[0].address, rows[0].ports) == (
        now - 20,
        "10.0.1.7",
        '{"80":30001}',
    )
    assert await ledger.charge_of(run.charge_id) == (40, 40)  # up to the new task's start
    # Reconciled again: the same task, the same run.
    report = await reconciler.reconcile()
    assert report.kept == ["web-j"] and not report.closed


async def test_the_leader_rechecks_a_move_its_event_poll_did_not_see(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Swarm moved a daemon between the leader's reconcile and its event
    poll's first look (no event will come): the leader's recheck still opens
    the new run with the new address, so the proxy dials the new task."""
    monkeypatch.setattr(reconcile, "SWARM_RECHECK", 0.3)
    now = int(time.time())
    await ledger.grant_once("recheck@x", "g", 1000)
    await ledger.register_workload(
        instance="i",
        kind="daemon",
        subject="recheck@x",
        jti="j",
        name="web",
        container_name="web-j",
        container_id="svc1",
        image="img",
        address="10.0.1.7",
        ports={"80": 30001},
        started_at=now - 30,
    )
    runtime = OneServiceRuntime("svc1", "web-j", now - 30)
    leadership = Leadership(ledger, "meter:i", "one", every=0.5)
    settings = make_settings(Path(tempfile.mkdtemp()))
    reconciler = Reconciler(settings, ledger, runtime, "i", leadership=leadership)  # type: ignore[arg-type]
    tasks = [asyncio.create_task(leadership.run()), asyncio.create_task(reconciler.run())]
    try:
        await eventually(lambda: _set(reconciler.reconciled), 10, "the leader reconciled")
        runtime.info = dataclasses.replace(
            runtime.info, address="10.0.2.9", ports={"80": 30002}, started_at=time.time()
        )

        async def moved() -> bool:
            rows = await ledger.running_workloads("i")
            return len(rows) == 1 and rows[0].address == "10.0.2.9"

        await eventually(moved, 10, "the leader's recheck sees the new task")
        (row,) = await ledger.running_workloads("i")
        assert row.ports == '{"80":30002}'
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _set(event: asyncio.Event) -> bool:
    return event.is_set()
