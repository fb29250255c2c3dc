"""Admission control for minion runs: at most `limit` run at once, up to
`queue` more wait their turn in arrival order, and one more is refused at
once (429 with `Retry-After`) instead of starting a container that would
wait for the CPU and time out.

A run's timeout counts from its start, after its wait here (see
`herder.runtime.runs`), so waiting costs a run none of its time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import AsyncIterator

from .errors import TooManyRequests

# Weight of the newest run in the running mean of how long a slot is held.
_MEAN_WEIGHT = 0.2


class QueueFull(TooManyRequests):
    message = "too many minion runs at once; try again later"


class Admission:
    """A FIFO semaphore with a bounded queue and the figures `/metrics` shows."""

    def __init__(self, limit: int, queue: int) -> None:
        if limit < 1 or queue < 0:
            raise ValueError("limit must be at least 1 and queue at least 0")
        self.limit = limit
        self.queue = queue
        self.running = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.rejected = 0  # refused with the queue full
        self.admitted = 0
        self._mean_hold = 1.0  # seconds a slot is held, a running mean

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def retry_after(self) -> int:
        """Seconds until a place in the queue is likely free: the time for the
        runs ahead to drain at the measured pace; at least 1."""
        ahead = self.waiting + self.running
        return max(1, math.ceil(self._mean_hold * ahead / self.limit))

    def check(self) -> None:
        """`QueueFull` now if a run arriving now would be refused (so a
        request's body need not be read first)."""
        if self.running >= self.limit and len(self._waiters) >= self.queue:
            self.rejected += 1
            raise self._full()

    def _full(self) -> QueueFull:
        seconds = self.retry_after()
        return QueueFull(
            f"too many minion runs at once ({self.running} running, "
            f"{self.waiting} waiting); try again in {seconds} s",
            headers={"Retry-After": str(seconds)},
            retry_after=seconds,
        )

    async def acquire(self) -> float:
        """Wait for a slot; the seconds waited. `QueueFull` at once when the
        queue is full; a cancelled wait leaves the queue."""
        if self.running < self.limit and not self._waiters:
            self.running += 1
            self.admitted += 1
            return 0.0
        if len(self._waiters) >= self.queue:
            self.rejected += 1
            raise self._full()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        started = time.monotonic()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        self.admitted += 1
        return time.monotonic() - started

    def release(self, held: float | None = None) -> None:
        """Give a slot back (to the longest waiter, if any); `held` is how
        long it was held, for `retry_after`."""
        if held is not None:
            self._mean_hold += _MEAN_WEIGHT * (held - self._mean_hold)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes over: `running` stays
                return
        self.running -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """`acquire` ... `release`, giving the seconds waited."""
        waited = await self.acquire()
        started = time.monotonic()
        try:
            yield waited
        finally:
            self.release(time.monotonic() - started)
