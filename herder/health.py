"""`GET /healthz`: is the database reachable, is Docker reachable, how fast."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import __version__, appkeys

CHECK_TIMEOUT = 5.0

routes = web.RouteTableDef()


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


async def check_health(app: web.Application) -> dict[str, Any]:
    database, docker = await asyncio.gather(
        _timed(app[appkeys.LEDGER].ping), _timed(app[appkeys.RUNTIME].ping)
    )
    report: dict[str, Any] = {
        "ok": database["ok"] and docker["ok"],
        "version": __version__,
        "instance": app[appkeys.INSTANCE],
        "database": database,
        "docker": docker,
    }
    if appkeys.CHANNELS in app:  # channels on (REDIS_URL): Redis counts too
        report["redis"] = await _timed(app[appkeys.CHANNELS].ping)
        report["ok"] = report["ok"] and report["redis"]["ok"]
    return report


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    report = await check_health(request.app)
    return web.json_response(report, status=200 if report["ok"] else 503)
