"""`GET /healthz`: 200 with the report when the database and Docker answer (and
Redis, with the channels on), else 503."""

from __future__ import annotations

from aiohttp import web

from ..health import check_health
from ..openapi import (
    BOOL,
    NUM,
    STR,
    Docs,
    Op,
    obj,
)
from . import keys

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    app = request.app
    channels = app.get(keys.CHANNELS)
    report = await check_health(
        app[keys.LEDGER],
        app[keys.RUNTIME],
        app[keys.INSTANCE],
        redis_ping=channels.ping if channels is not None else None,
    )
    return web.json_response(report, status=200 if report["ok"] else 503)


# -- OpenAPI docs of these routes (herder.openapi) ---------------------------------

_CHECK = obj(["ok", "ms"], ok=BOOL, ms=NUM, error=STR)
docs: Docs = {
    "/healthz": {
        "GET": Op(
            "Database and Docker reachability",
            "operations",
            responses={
                200: ("both reachable", obj(["ok"], ok=BOOL, database=_CHECK, docker=_CHECK)),
                503: ("either check failed", obj(["ok"], ok=BOOL, database=_CHECK, docker=_CHECK)),
            },
        )
    }
}
