"""Keep the registry (desired state) in step with Docker (actual state).

`Reconciler.reconcile()` runs at start and whenever the event stream had to be
re-opened (events may have been missed):

- a registered run whose container still runs goes on being metered (the
  next tick charges the time the herder was down, once); its address and
  host ports are refreshed;
- a registered run whose container stopped is charged up to the container's
  stop time and closed; one whose container is gone is closed;
- a container this herder registered before but whose run is closed, and
  that runs again (Docker restarted it), is metered again, or stopped when
  its subject has no credits;
- a container of this herder's instance that the registry has never heard
  of and that is older than this process is a leftover (a crash between
  create and register, a minion whose herder died): it is removed.

Daemons and golems both have registry rows, so all of this applies to both.

`Reconciler.run()` reconciles, then follows Docker's event stream, so a
daemon (or golem) that exits, is OOM-killed or removed by hand stops costing credits at
once; no container is polled.

On a Swarm (`leadership` given) the replicas share the registry and the
services, and only the replica that leads (holds the lease, the same one
that meters) reconciles them and follows their events, from when it takes
the lease until it loses it; `reconciled` is set while it leads and has
reconciled. Every replica sweeps, at start, its own node's leftover plain
containers (minions of a replica that died there: only the engine of that
node reaches them), through `node_runtime`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from .leadership import Leadership
from .ledger import Ledger, Workload
from .pool import LABEL_POOL
from .runtime import ContainerInfo, Runtime
from .runtime.base import (
    LABEL_INSTANCE,
    LABEL_KIND,
    LABEL_MANAGED,
    RuntimeEvent,
)
from .runtime.swarm import LABEL_SERVICE_ID
from .settings import Settings

log = logging.getLogger("herder.reconcile")

# Kinds with rows in the workload registry (golems have one even when they
# are anonymous and unmetered): their stops close the row, their restarts
# open a new one.
REGISTERED_KINDS = ("daemon", "golem")
# Kinds whose unknown containers are removed.
SWEPT_KINDS = ("daemon", "golem", "minion")
STOP_EVENTS = ("die", "destroy")
MAX_BACKOFF = 30.0
# On a Swarm, an unknown service younger than this may be a spawn of another
# replica between creating it and registering it (a spawn waits up to 60 s
# for its task): it is left alone.
SERVICE_GRACE = 90.0
# On a Swarm the leader also reconciles every this many seconds: its event
# stream is a poll whose first look is only a baseline, so a task the Swarm
# replaced between a reconcile and that look (a drained node's daemon moving
# while the lease changes hands) would otherwise keep its old run and address.
SWARM_RECHECK = 10.0


@dataclass
class ReconcileReport:
    kept: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        runtime: Runtime,
        instance: str,
        *,
        started_at: float | None = None,
        leadership: Leadership | None = None,
        node_runtime: Runtime | None = None,
    ) -> None:
        self.leadership = leadership
        self.node_runtime = node_runtime
        self.settings = settings
        self.ledger = ledger
        self.runtime = runtime
        self.instance = instance
        # Containers created after this are never "unknown": a spawn may be
        # between creating its container and registering it.
        self.started_at = time.time() if started_at is None else started_at
        self.reconciled = asyncio.Event()
        # Called with the container name of each run closed (see Daemons.on_removed).
        self.on_closed: list[Callable[[str], None]] = []

    @property
    def _labels(self) -> dict[str, str]:
        return {LABEL_MANAGED: "1", LABEL_INSTANCE: self.instance}

    async def reconcile(self) -> ReconcileReport:
        report = ReconcileReport()
        containers = {c.id: c for c in await self.runtime.list(self._labels)}
        for kind in REGISTERED_KINDS:
            for row in await self.ledger.running_workloads(self.instance, kind):
                found = containers.get(row.container_id or "")
                if found is None and row.container_id:
                    # Registered after the list was taken (a spawn while we
                    # reconcile): ask for it by id before calling it gone.
                    found = await self.runtime.inspect(row.container_id)
                if found is not None and found.state == "running":
                    if found.started_at > row.started_at + 1:
                        await self._task_replaced(row, found)
                        report.closed.append(row.container_name)
                        report.resumed.append(row.container_name)
                        continue
                    await self._refresh(row, found)
                    report.kept.append(row.container_name)
                    continue
                await self._close_run(row, found)
                report.closed.append(row.container_name)
        candidates = [c for c in containers.values() if c.labels.get(LABEL_KIND) in SWEPT_KINDS]
        known = await self.ledger.known_containers(self.instance, [c.id for c in candidates])
        for container in candidates:
            container_kind = container.labels.get(LABEL_KIND)
            if container.id in known:
                if container_kind in REGISTERED_KINDS and container.state == "running":
                    if await self.resume(container):
                        report.resumed.append(container.name)
                continue
            exact = await self.runtime.inspect(container.id)
            if exact is not None and 0 < exact.created_at < self._sweep_before():
                log.warning(
                    "removing unknown herder container %s (%s)", container.name, container_kind
                )
                await self.runtime.remove(container.id)
                report.removed.append(container.name)
        self.reconciled.set()
        if report.closed or report.resumed or report.removed:
            log.info(
                "reconciled: kept %d, closed %s, resumed %s, removed %s",
                len(report.kept),
                report.closed,
                report.resumed,
                report.removed,
            )
        return report

    def _sweep_before(self) -> float:
        """Unknown containers made before this are leftovers."""
        if self.leadership is not None:  # (this node's leftovers: `sweep_node`)
            return min(self.started_at, time.time() - SERVICE_GRACE)
        return self.started_at

    async def sweep_node(self) -> list[str]:
        """Remove this node's leftover minion containers of this instance
        (older than this process: a dead replica's)."""
        if self.node_runtime is None:
            return []
        removed = []
        for listed in await self.node_runtime.list({**self._labels, LABEL_KIND: "minion"}):
            # Not a service's task (daemons and golems are the leader's), nor a
            # pool container (the pool removes its own stale ones at start).
            if LABEL_SERVICE_ID in listed.labels or LABEL_POOL in listed.labels:
                continue
            container = await self.node_runtime.inspect(listed.id)  # the exact creation time
            if container is not None and 0 < container.created_at < self.started_at:
                log.warning("removing leftover herder container %s on this node", container.name)
                await self.node_runtime.remove(container.id)
                removed.append(container.name)
        return removed

    async def _refresh(self, row: Workload, container: ContainerInfo) -> None:
        ports = _ports_like(row, container)
        if container.address != row.address or json.loads(row.ports or "{}") != ports:
            await self.ledger.update_workload_endpoint(row.id, container.address, ports)

    async def _task_replaced(self, row: Workload, service: ContainerInfo) -> None:
        """A service's task started after its run began: the Swarm restarted
        or moved it while no replica followed it (every replica down, or the
        leader's lease in between). The run ends and a new one begins when
        that task started: the ledger stays continuous, charged once."""
        assert row.container_id is not None
        closed = await self.ledger.close_workload(
            self.instance, row.container_id, at=service.started_at, rate=self.settings.credit_rate
        )
        if closed is not None:
            for hook in self.on_closed:
                hook(closed.container_name)
        await self.ledger.resume_workload(
            self.instance,
            row.container_id,
            address=service.address,
            ports=_ports_like(row, service),
            started_at=int(service.started_at),
        )
        log.info("%s %s was restarted by the Swarm meanwhile: a new run", row.kind, row.name)

    async def _close_run(self, row: Workload, listed: ContainerInfo | None) -> None:
        """Close a run whose container no longer runs, charged up to its stop time."""
        if row.container_id is None:
            return
        end = float(row.metered_until)
        if listed is not None:
            inspected = await self.runtime.inspect(row.container_id)
            if inspected is not None and inspected.state == "running":
                return  # it came back meanwhile
            if inspected is not None and inspected.finished_at:
                end = inspected.finished_at
        closed = await self.ledger.close_workload(
            self.instance, row.container_id, at=end, rate=self.settings.credit_rate
        )
        if closed is not None:  # (the same line as a stop event's)
            log.info("%s %s stopped (reconciled)", row.kind, closed.container_name)
            for hook in self.on_closed:
                hook(closed.container_name)

    async def resume(self, container: ContainerInfo) -> bool:
        """Open a new run for a known daemon or golem that runs without one
        (Docker restarted it). A metered one is stopped instead when its
        subject has no credits."""
        kind = container.labels.get(LABEL_KIND, "")
        if await self.ledger.running_workload(self.instance, kind, container.name):
            return False
        previous = await self.ledger.last_workload(self.instance, container.id)
        if previous is None:
            return False  # not registered yet: its spawn will
        if previous.metered and (await self.ledger.balance(previous.subject)).remaining <= 0:
            log.info(
                "%s %s runs again but %s has no credits: stopping",
                kind,
                container.name,
                previous.subject,
            )
            await self.runtime.stop(container.id)
            return False
        resumed = await self.ledger.resume_workload(
            self.instance,
            container.id,
            address=container.address,
            ports=_ports_like(previous, container),
        )
        if resumed is not None:
            log.info("%s %s runs again: metering it", kind, container.name)
        return resumed is not None

    async def handle(self, event: RuntimeEvent) -> None:
        """Apply one container event of this herder's daemons and golems."""
        kind = event.labels.get(LABEL_KIND)
        if kind not in REGISTERED_KINDS:
            return
        if event.action == "oom":
            log.warning("%s %s was killed: out of memory", kind, event.id[:12])
        elif event.action in STOP_EVENTS:
            closed = await self.ledger.close_workload(
                self.instance,
                event.id,
                at=event.time or time.time(),
                rate=self.settings.credit_rate,
            )
            if closed is not None:
                log.info("%s %s stopped (%s)", kind, closed.container_name, event.action)
                for hook in self.on_closed:
                    hook(closed.container_name)
        elif event.action == "start":
            info = await self.runtime.inspect(event.id)
            if info is not None and info.state == "running":
                await self.resume(info)

    async def run(self) -> None:
        """Reconcile, then follow the event stream; on a Swarm, sweep this
        node, then do that whenever this replica leads."""
        if self.leadership is None:
            await self._follow()
            return
        await self._retrying(self.sweep_node, "could not sweep this node's leftovers")
        while True:
            await self.leadership.wait_held()
            follow = asyncio.create_task(self._follow())
            lost = asyncio.create_task(self.leadership.wait_lost())
            try:
                await asyncio.wait({follow, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self.reconciled.clear()
                for task in (follow, lost):
                    task.cancel()
                await asyncio.gather(follow, lost, return_exceptions=True)

    @staticmethod
    async def _retrying(step: Callable[[], Awaitable[object]], failure: str) -> None:
        backoff = 1.0
        while True:
            try:
                await step()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s; retrying in %.0f s", failure, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _follow(self) -> None:
        """Reconcile, then follow the event stream; again after any engine
        error, and on a Swarm every `SWARM_RECHECK` seconds."""
        backoff = 1.0
        recheck = None if self.leadership is None else SWARM_RECHECK
        while True:
            try:
                mark = time.time()
                await self.reconcile()
                # Docker ANDs label filters, so kinds are told apart in `handle`.
                stream = self.runtime.events(self._labels, since=mark - 1)
                window = asyncio.timeout(recheck)
                try:
                    async with window, aclosing(stream):
                        async for event in stream:
                            backoff = 1.0
                            try:
                                await self.handle(event)
                            except Exception:
                                log.exception("could not apply the %s event", event.action)
                except TimeoutError:
                    if not window.expired():
                        raise
                    continue  # a Swarm's recheck: reconcile again at once
                log.warning("Docker event stream ended; reconciling")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciler failed; retrying in %.0f s", backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)


def _ports_like(row: Workload, container: ContainerInfo) -> dict[str, int]:
    """The run's ports in their requested order, with the container's host ports now."""
    try:
        wanted = list(json.loads(row.ports or "{}"))
    except (ValueError, TypeError):
        wanted = []
    return {p: container.ports.get(p, 0) for p in wanted}
