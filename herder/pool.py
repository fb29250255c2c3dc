"""Warm pools of minion containers (`MINION_POOL`, e.g. `python=4,node=2`).

Per environment, a few containers are created and started ahead of the
requests with exactly the limits of a run (`Runtime.prepare_run`), their
wrapper waiting on stdin. A spawn takes one (a hit) and only sends its files
and its start line; with none ready (a miss) it makes its own as before.
A container is never used twice: the run's removes it, and the pool makes
a new one in the background. Pool containers carry the instance label and
`herder.pool=<env>`; start-up removes this instance's stale ones (a crash),
shutdown removes the waiting ones, and a check every few seconds drops and
replaces those that stopped (an engine restart). Nothing here is charged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from collections.abc import Callable

from .runtime import RunSpec, Runtime
from .runtime.base import LABEL_INSTANCE, LABEL_MANAGED

log = logging.getLogger("herder.pool")

LABEL_POOL = "herder.pool"
# Seconds between checks that the waiting containers still run.
CHECK_INTERVAL = 5.0
# Seconds to wait before trying again after the engine refused a container.
RETRY_DELAY = 5.0
# Containers made at once while refilling (each start costs the engine CPU).
REFILL_AT_ONCE = 2


class MinionPool:
    """The waiting containers of each environment, and their figures."""

    def __init__(
        self,
        runtime: Runtime,
        sizes: dict[str, int],
        spec_for: Callable[[str], RunSpec],
        instance: str,
    ) -> None:
        self.runtime = runtime
        self.sizes = {env: size for env, size in sizes.items() if size > 0}
        self._spec_for = spec_for  # the run spec of an env, labels aside
        self.instance = instance
        self._ready: dict[str, collections.deque[str]] = {
            env: collections.deque() for env in self.sizes
        }
        self._making: dict[str, int] = dict.fromkeys(self.sizes, 0)
        self.hits: dict[str, int] = dict.fromkeys(self.sizes, 0)
        self.misses: dict[str, int] = dict.fromkeys(self.sizes, 0)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._making_tasks: set[asyncio.Task[bool]] = set()

    def labels(self, env: str) -> dict[str, str]:
        return {
            LABEL_MANAGED: "1",
            "herder.kind": "minion",
            "herder.name": env,
            LABEL_INSTANCE: self.instance,
            LABEL_POOL: env,
        }

    def ready(self, env: str) -> int:
        return len(self._ready.get(env, ()))

    def is_waiting(self, container_id: str) -> bool:
        """Whether the container is one of the pool's, not yet taken by a run."""
        return any(container_id in ready for ready in self._ready.values())

    def take(self, env: str) -> str | None:
        """A waiting container for a run of `env`, or None (a miss)."""
        if env not in self.sizes:
            return None
        ready = self._ready[env]
        if not ready:
            self.misses[env] += 1
            self._wake.set()
            return None
        self.hits[env] += 1
        self._wake.set()
        return ready.popleft()

    def figures(self) -> dict[str, dict[str, int]]:
        """Per environment: size, ready, hits, misses (for `/node/v1/specs`)."""
        return {
            env: {
                "Size": size,
                "Ready": self.ready(env),
                "Hits": self.hits[env],
                "Misses": self.misses[env],
            }
            for env, size in sorted(self.sizes.items())
        }

    # -- life cycle -------------------------------------------------------------

    async def start(self) -> None:
        """Remove this instance's stale pool containers, then fill in the background."""
        if not self.sizes:
            return
        try:
            await self._remove_stale()
            swept = True
        except Exception:  # the engine is down: the loop tries again
            swept = False
        self._task = asyncio.create_task(self._loop(swept), name="minion-pool")

    async def close(self) -> None:
        """Stop filling and remove the waiting containers."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in list(self._making_tasks):
            task.cancel()
        await asyncio.gather(*self._making_tasks, return_exceptions=True)
        waiting = [cid for ready in self._ready.values() for cid in ready]
        for ready in self._ready.values():
            ready.clear()
        await asyncio.gather(*(self._remove(cid) for cid in waiting))

    async def _remove_stale(self) -> None:
        base = {LABEL_MANAGED: "1", LABEL_INSTANCE: self.instance}
        stale = [c for c in await self.runtime.list(base) if LABEL_POOL in c.labels]
        if stale:
            log.info("removing %d stale pool containers", len(stale))
        await asyncio.gather(*(self._remove(c.id) for c in stale))

    async def _remove(self, container_id: str) -> None:
        try:
            await self.runtime.remove(container_id)
        except Exception:
            log.warning("could not remove pool container %s", container_id[:12], exc_info=True)

    async def _loop(self, swept: bool) -> None:
        while True:
            self._wake.clear()  # before refilling: a take meanwhile wakes the next round
            if not swept:
                try:
                    await self._remove_stale()
                    swept = True
                except Exception:
                    log.warning("pool: the engine is not answering; trying again")
            failed = not swept or await self._refill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RETRY_DELAY if failed else CHECK_INTERVAL)
            if not self._wake.is_set():  # quiet: see that the waiting ones still run
                with contextlib.suppress(Exception):
                    await self._check()

    async def _refill(self) -> bool:
        """Make what is missing, a few at a time; True when the engine refused one."""
        failed = False
        while not failed:
            wanted = [
                env
                for env, size in self.sizes.items()
                if len(self._ready[env]) + self._making[env] < size
            ]
            if not wanted:
                return False
            batch = []
            for env in wanted[:REFILL_AT_ONCE]:
                self._making[env] += 1
                batch.append(asyncio.create_task(self._make(env)))
            self._making_tasks.update(batch)
            results = await asyncio.gather(*batch, return_exceptions=True)
            self._making_tasks.difference_update(batch)
            failed = any(result is not True for result in results)
        return True

    async def _make(self, env: str) -> bool:
        try:
            spec = self._spec_for(env)
            spec = dataclasses.replace(spec, labels=self.labels(env), files={}, output_file=None)
            container_id = await self.runtime.prepare_run(spec)
        except Exception as exc:
            log.warning("pool: could not prepare a %s container: %s", env, exc)
            return False
        finally:
            self._making[env] -= 1
        self._ready[env].append(container_id)
        return True

    async def _check(self) -> None:
        """Drop (and remove) waiting containers that are no longer running."""
        base = {LABEL_MANAGED: "1", LABEL_INSTANCE: self.instance}
        running = {c.id for c in await self.runtime.list(base, all=False) if LABEL_POOL in c.labels}
        for env, ready in self._ready.items():
            gone = [cid for cid in ready if cid not in running]
            for cid in gone:
                ready.remove(cid)
                log.info("pool: a waiting %s container stopped; replacing it", env)
                await self._remove(cid)
            if gone:
                self._wake.set()
