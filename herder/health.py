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


async def check_health(
    ledger: Ledger,
    runtime: Runtime,
    instance: str,
    redis_ping: Callable[[], Awaitable[Any]] | None = None,
) -> dict[str, Any]:
    """The report; `ok` only when the database and the engine answer, and
    Redis too when the channels are on (`redis_ping` given)."""
    checks = [_timed(ledger.ping), _timed(runtime.ping)]
    if redis_ping is not None:
        checks.append(_timed(redis_ping))
    database, docker, *redis = await asyncio.gather(*checks)
    report: dict[str, Any] = {
        "ok": database["ok"] and docker["ok"] and all(r["ok"] for r in redis),
        "version": __version__,
        "instance": instance,
        "database": database,
        "docker": docker,
    }
    if redis:
        report["redis"] = redis[0]
    return report
