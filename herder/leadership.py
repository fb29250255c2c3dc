"""Leadership of a cluster's replicas: one at a time holds the lease
`<name>` in the ledger (`herder.ledger.leases`) and so meters and reconciles
every workload of the herder (`herder.metering`, `herder.reconcile`).

`run` renews (or tries to take) the lease every `every` seconds. A replica
counts itself the holder only until `ttl - MARGIN` seconds after the start
of its last successful renewal, by its monotonic clock, so it stops acting
before another replica can take a lease it failed to renew; a replica that
dies loses it `ttl` seconds after its last renewal, and the next renewal of
another replica takes it over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .ledger import Ledger

log = logging.getLogger("herder.leadership")

LEASE_TTL = 6.0  # seconds the lease lasts unless renewed
RENEW_EVERY = 1.0
MARGIN = 1.0  # seconds before the lease's end a holder stops counting on it


class Leadership:
    def __init__(
        self,
        ledger: Ledger,
        name: str,
        holder: str,
        *,
        ttl: float = LEASE_TTL,
        every: float = RENEW_EVERY,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ledger = ledger
        self.name = name
        self.holder = holder
        self.ttl = ttl
        self.every = every
        self._clock = clock
        self._monotonic = monotonic
        self._until = float("-inf")  # monotonic time up to which this replica holds it
        self._gained = asyncio.Event()
        self._lost = asyncio.Event()
        self._lost.set()
        self.terms = 0  # how many times this replica took the lease

    @property
    def held(self) -> bool:
        return self._monotonic() < self._until

    async def renew(self) -> bool:
        """Take or renew the lease once; True when this replica holds it now."""
        started = self._monotonic()
        try:
            got = await self.ledger.acquire_lease(
                self.name, self.holder, self.ttl, now=self._clock()
            )
        except Exception:
            log.warning("could not renew the lease %s", self.name, exc_info=True)
            got = False
        if got:
            self._until = started + self.ttl - MARGIN
        self._update()
        return self.held

    def _update(self) -> None:
        if self.held and not self._gained.is_set():
            self.terms += 1
            log.info("this replica leads (lease %s): it meters and reconciles", self.name)
            self._lost.clear()
            self._gained.set()
        elif not self.held and self._gained.is_set():
            log.warning("this replica no longer leads (lease %s)", self.name)
            self._gained.clear()
            self._lost.set()

    async def wait_held(self) -> None:
        await self._gained.wait()

    async def wait_lost(self) -> None:
        """Until the lease is lost (checked at every renewal and at its end)."""
        while True:
            if not self.held:
                self._update()
                return
            try:
                await asyncio.wait_for(self._lost.wait(), max(0.0, self._until - self._monotonic()))
                return
            except TimeoutError:
                continue

    async def run(self) -> None:
        """Renew every `every` seconds until cancelled."""
        while True:
            await self.renew()
            await asyncio.sleep(self.every)

    async def release(self) -> None:
        """Give the lease up (shutdown), so another replica takes it at once."""
        self._until = float("-inf")
        self._update()
        await self.ledger.release_lease(self.name, self.holder)
