"""Owned background tasks: started with a block, cancelled and awaited when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

log = logging.getLogger("herder")


@contextlib.asynccontextmanager
async def owned_task(
    coro: Coroutine[Any, Any, None], name: str
) -> AsyncIterator[asyncio.Task[None]]:
    """Run a background loop for the lifetime of the block: cancelled and
    awaited on exit; if it ever ends with an error, that error is logged."""
    task = asyncio.create_task(coro, name=name)

    def report(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.error("background task %s died", name, exc_info=done.exception())

    task.add_done_callback(report)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
