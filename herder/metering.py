"""The metering loop: every tick charges all running metered workloads at once.

Each tick (`settings.metering_interval`, 1 s by default) runs
`Ledger.meter_tick`: one transaction that charges every running workload of
this herder from the persisted meter position up to now (by moving the
instance's meter clock, not every run's row; see `herder.ledger.registry`).
Because the position is persisted with the charges, a late tick charges the
seconds it missed and a restarted herder charges the time it was down, once.

Wall-clock jumps are told apart from elapsed time with the monotonic clock:
a jump shifts the position (and the start of runs not charged yet) by the
jump (so it neither charges an hour nor a negative amount), and no workload
is charged more than the monotonic time since the previous successful tick.

Daemons of subjects at or below zero are stopped right after the tick that
found them. The loop starts after the first reconcile with Docker. When
charges cannot be recorded for longer than `settings.metering_grace`, every
daemon of this herder is stopped rather than left running unmetered; once
the database answers again the registry is reconciled (runs of stopped
containers are closed at their stop time) before metering goes on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

from .leadership import Leadership
from .ledger import Ledger, TickResult, Workload
from .runtime import Runtime
from .runtime.base import LABEL_INSTANCE, LABEL_KIND, LABEL_MANAGED
from .settings import Settings

log = logging.getLogger("herder.metering")

CLOCK_STEP_TOLERANCE = 2.0  # seconds of disagreement between wall and monotonic time
STOP_TIMEOUT = 3.0


class Meter:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        runtime: Runtime,
        instance: str,
        *,
        recover: Callable[[], Awaitable[object]] | None = None,
        ready: asyncio.Event | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        leadership: Leadership | None = None,
    ) -> None:
        # Replicas of one herder (a cluster) share the instance's meter
        # position and meter through one lease: only its holder ticks, once
        # it has reconciled (`ready`), so a replica that takes the lease over
        # charges from where the last holder stopped.
        self.leadership = leadership
        self.settings = settings
        self.ledger = ledger
        self.runtime = runtime
        self.instance = instance
        self._recover = recover
        self._ready = ready
        self._clock = clock
        self._monotonic = monotonic
        self._last: tuple[float, float] | None = None  # (wall, monotonic) of the last tick
        self._failing_since: float | None = None
        self._needs_recovery = False
        self.ticks = 0

    async def tick(self) -> TickResult:
        """Charge everything that runs up to now; stop the metered workloads (daemons,
        token-mode golems) of exhausted subjects."""
        wall, mono = self._clock(), self._monotonic()
        step, cap = 0, None
        if self._last is not None:
            last_wall, last_mono = self._last
            elapsed = max(0.0, mono - last_mono)
            drift = wall - (last_wall + elapsed)
            if abs(drift) > CLOCK_STEP_TOLERANCE:
                step = round(drift)
                log.warning("wall clock jumped by %+d s; metering follows elapsed time", step)
            cap = math.ceil(elapsed) + 1
        result = await self.ledger.meter_tick(
            self.instance, int(wall), self.settings.credit_rate, cap=cap, step=step
        )
        self._last = (wall, mono)
        self.ticks += 1
        if result.exhausted:
            await self._stop_exhausted(result.exhausted)
        return result

    async def _stop_exhausted(self, workloads: list[Workload]) -> None:
        async def stop(workload: Workload) -> None:
            if workload.container_id is None:
                return
            try:
                await self.runtime.stop(workload.container_id, timeout=STOP_TIMEOUT)
                await self.ledger.close_workload(
                    self.instance,
                    workload.container_id,
                    at=self._clock(),
                    rate=self.settings.credit_rate,
                )
                log.info(
                    "daemon %s stopped: %s has no credits left",
                    workload.container_name,
                    workload.subject,
                )
            except Exception:
                log.exception("could not stop daemon %s", workload.container_name)

        await asyncio.gather(*(stop(w) for w in workloads))

    async def _stop_all_daemons(self) -> None:
        """Charges cannot be recorded: stop every running daemon of this herder."""
        labels = {LABEL_MANAGED: "1", LABEL_INSTANCE: self.instance, LABEL_KIND: "daemon"}
        running = await self.runtime.list(labels, all=False)
        if running:
            log.error(
                "charges could not be recorded for over %.0f s: stopping %d daemons",
                self.settings.metering_grace,
                len(running),
            )
        await asyncio.gather(*(self.runtime.stop(c.id, timeout=STOP_TIMEOUT) for c in running))

    async def step(self) -> None:
        """One turn of the loop: recover if needed, tick, apply the grace period."""
        try:
            if self._needs_recovery and self._recover is not None:
                await self._recover()
                self._needs_recovery = False
            if self.leadership is not None and not (
                self.leadership.held and (self._ready is None or self._ready.is_set())
            ):
                # Another replica meters; should this one take over, its
                # first tick charges from the shared position on.
                self._last = None
                self._failing_since = None
                return
            await self.tick()
            if self._failing_since is not None:
                log.warning("metering recovered")
            self._failing_since = None
        except asyncio.CancelledError:
            raise
        except Exception:
            now = self._monotonic()
            if self._failing_since is None:
                self._failing_since = now
                log.exception("metering tick failed; retrying")
            if now - self._failing_since > self.settings.metering_grace:
                self._needs_recovery = True
                try:
                    await self._stop_all_daemons()
                except Exception:
                    log.exception("could not stop daemons after the metering grace period")

    async def run(self) -> None:
        """Tick every `metering_interval` until cancelled, once `ready` is set
        (the first reconcile: never charge a run whose container died while
        the herder was down; the first tick charges whatever the wait cost)."""
        if self._ready is not None and not self._ready.is_set():
            log.info("metering waits for the first reconcile with Docker")
            await self._ready.wait()
        interval = self.settings.metering_interval
        next_at = self._monotonic()
        while True:
            await self.step()
            next_at += interval
            delay = next_at - self._monotonic()
            if delay < 0:  # a slow tick: start again now, charges catch up by time
                next_at = self._monotonic()
                delay = 0
            await asyncio.sleep(delay)
