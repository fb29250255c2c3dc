"""Caps on open streams: log follows and attach sockets.

Each holds an engine connection (an attach session one per container) for
as long as its client stays, so without a cap one token holder could take
every connection the runtime keeps for streams. A subject may hold
`STREAMS_PER_SUBJECT` at once and the herder `STREAMS_TOTAL`; past either
the request is a 429 before anything is opened.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import TooManyRequests


class StreamLimits:
    def __init__(self, per_subject: int, total: int) -> None:
        self.per_subject = per_subject
        self.total = total
        self.open = 0
        self._open: Counter[str] = Counter()
        # Set when the herder shuts down: open follows end at once.
        self.closing = asyncio.Event()

    @contextmanager
    def hold(self, subject: str) -> Iterator[None]:
        """One stream of `subject` for the length of the block, or `TooManyRequests`."""
        if self._open[subject] >= self.per_subject:
            raise TooManyRequests(
                f"too many open log follows and attach sockets for this subject "
                f"(at most {self.per_subject}): close one first",
                limit=self.per_subject,
            )
        if self.open >= self.total:
            raise TooManyRequests(
                f"the herder has too many open log follows and attach sockets "
                f"(at most {self.total}): try again later",
                limit=self.total,
            )
        self._open[subject] += 1
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1
            self._open[subject] -= 1
            if self._open[subject] <= 0:
                del self._open[subject]
