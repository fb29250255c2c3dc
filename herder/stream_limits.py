"""Caps on open streams: log follows and attach sockets.

Each holds an engine connection (an attach session one per container) for
as long as its client stays, so without a cap one token holder could take
every connection the runtime keeps for streams. A subject may hold
`STREAMS_PER_SUBJECT` at once and the herder `STREAMS_TOTAL`; past either
the request is a 429 before anything is opened.

The counts are this process's own, unless `shared` is set (a ledger on
PostgreSQL, `herder.app`): then they are rows of the ledger
(`herder.holds.SharedHolds`) and count the streams of every replica of the
herder.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .holds import SharedHolds, too_many_streams


class StreamLimits:
    def __init__(self, per_subject: int, total: int) -> None:
        self.per_subject = per_subject
        self.total = total
        self.shared: SharedHolds | None = None
        self._open: Counter[str] = Counter()
        # Set when the herder shuts down: open follows end at once.
        self.closing = asyncio.Event()

    @property
    def open(self) -> int:
        """Streams this process holds."""
        if self.shared is not None:
            return self.shared.streams_open
        return self._open.total()

    @asynccontextmanager
    async def hold(self, subject: str) -> AsyncIterator[None]:
        """One stream of `subject` for the length of the block, or `TooManyRequests`."""
        if self.shared is not None:
            async with self.shared.stream(subject, self.per_subject, self.total):
                yield
            return
        if self._open[subject] >= self.per_subject:
            raise too_many_streams("subject", self.per_subject, self.total)
        if self._open.total() >= self.total:
            raise too_many_streams("total", self.per_subject, self.total)
        self._open[subject] += 1
        try:
            yield
        finally:
            self._open[subject] -= 1
            if self._open[subject] <= 0:
                del self._open[subject]
