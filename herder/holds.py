"""What runs in flight may cost, and which streams are open: held where
every herder sharing the ledger counts them.

A minion run holds the most it may cost (`MINION_TIMEOUT` seconds of
credits) while it runs, so concurrent runs of one subject overdraw it by at
most one run; a log follow or attach socket holds one of its subject's
`STREAMS_PER_SUBJECT` and the herder's `STREAMS_TOTAL`.

- `MemoryHolds`: the process's memory, for a ledger one herder has to
  itself (SQLite, the single-machine default): no database write.
- `SharedHolds`: rows of the ledger's `holds` table (PostgreSQL: the
  replicas of a cluster, or several herders on one database), taken by a
  check-and-insert serialised per subject (`herder.ledger.holds`) and
  renewed every `RENEW_EVERY` seconds while this replica lives; the holds
  of a replica that died stop counting within `HOLD_TTL` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from .errors import NoCredits, TooManyRequests
from .ledger import Ledger

log = logging.getLogger("herder.holds")

HOLD_TTL = 9.0  # seconds a hold counts unless its replica renews it
RENEW_EVERY = 3.0


def no_credits(subject: str, remaining: int, held: int) -> NoCredits:
    if remaining <= 0:
        return NoCredits(f"no credits left for {subject}")
    return NoCredits(
        f"{remaining} credits left, and the minions {subject} "
        f"runs already may cost {held}: wait for them to finish"
    )


def too_many_streams(full: str, per_subject: int, total: int) -> TooManyRequests:
    if full == "subject":
        return TooManyRequests(
            f"too many open log follows and attach sockets for this subject "
            f"(at most {per_subject}): close one first",
            limit=per_subject,
        )
    return TooManyRequests(
        f"the herder has too many open log follows and attach sockets "
        f"(at most {total}): try again later",
        limit=total,
    )


class CreditHolds(Protocol):
    def credits(self, subject: str, most: int) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold `most` credits of `subject` for the block, or `NoCredits`."""


class MemoryHolds:
    """Credit holds in this process's memory (a ledger of its own); its
    stream holds are `StreamLimits`' own counters."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._credits: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def credits(self, subject: str, most: int) -> AsyncIterator[None]:
        remaining = (await self.ledger.balance(subject)).remaining
        # No await between this check and the hold, so racing spawns see each other.
        held = self._credits.get(subject, 0)
        if remaining <= 0 or (held and remaining - held <= 0):
            raise no_credits(subject, remaining, held)
        self._credits[subject] = held + most
        try:
            yield
        finally:
            left = self._credits[subject] - most
            if left:
                self._credits[subject] = left
            else:
                del self._credits[subject]


class SharedHolds:
    """Holds as rows of the ledger, counted by every herder on the database;
    `run` renews this replica's while it lives, `close` drops them."""

    def __init__(self, ledger: Ledger, instance: str, replica: str, ttl: float = HOLD_TTL) -> None:
        self.ledger = ledger
        self.instance = instance
        self.replica = replica
        self.ttl = ttl
        self._mine: set[int] = set()
        self._streams = 0

    @property
    def streams_open(self) -> int:
        """Streams this replica holds."""
        return self._streams

    @contextlib.asynccontextmanager
    async def credits(self, subject: str, most: int) -> AsyncIterator[None]:
        hold = await self.ledger.hold_credits(
            subject, most, instance=self.instance, replica=self.replica, ttl=self.ttl
        )
        if hold.id is None:
            raise no_credits(subject, hold.remaining, hold.held)
        async with self._held(hold.id):
            yield

    @contextlib.asynccontextmanager
    async def stream(self, subject: str, per_subject: int, total: int) -> AsyncIterator[None]:
        hold = await self.ledger.hold_stream(
            subject,
            instance=self.instance,
            replica=self.replica,
            per_subject=per_subject,
            total=total,
            ttl=self.ttl,
        )
        if hold.id is None:
            raise too_many_streams(hold.full or "total", per_subject, total)
        self._streams += 1
        try:
            async with self._held(hold.id):
                yield
        finally:
            self._streams -= 1

    @contextlib.asynccontextmanager
    async def _held(self, hold_id: int) -> AsyncIterator[None]:
        self._mine.add(hold_id)
        try:
            yield
        finally:
            # Never renewed again: should the delete fail, the row lapses.
            self._mine.discard(hold_id)
            try:
                await asyncio.shield(self.ledger.release_hold(hold_id))
            except Exception:
                log.warning("could not release hold %d; it lapses in %.0f s", hold_id, self.ttl)

    async def renew(self) -> None:
        await self.ledger.renew_holds(self.replica, sorted(self._mine), self.ttl)

    async def run(self) -> None:
        """Renew this replica's holds every `RENEW_EVERY` seconds until cancelled."""
        while True:
            await asyncio.sleep(RENEW_EVERY)
            try:
                await self.renew()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("could not renew this replica's holds; retrying", exc_info=True)

    async def close(self) -> None:
        self._mine.clear()
        await self.ledger.release_replica_holds(self.replica)
