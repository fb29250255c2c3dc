"""The health report behind `GET /healthz`: is the database reachable, is Docker
reachable, how fast."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import __version__
from .ledger import Ledger
from .runtime import Runtime

CHECK_TIMEOUT = 5.0


async def _timed(check: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    started = time.monotonic()
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT)
    except Exception as exc:  # any failure means "not reachable"; never leak details
        return {
            "ok": False,
            "ms": round((time.monotonic() - started) * 1000, 1),
            "error": type(exc).__name__ if not isinstance(exc, TimeoutError) else "timeout",
        }
    return {"ok": True, "ms": round((time.monotonic() - started) * 1000, 1)}


async def check_health(ledger: Ledger, runtime: Runtime, instance: str) -> dict[str, Any]:
    """The report; `ok` only when both the database and the engine answer."""
    database, docker = await asyncio.gather(_timed(ledger.ping), _timed(runtime.ping))
    return {
        "ok": database["ok"] and docker["ok"],
        "version": __version__,
        "instance": instance,
        "database": database,
        "docker": docker,
    }
