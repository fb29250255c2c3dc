"""`GET /healthz`: 200 with the report when the database and Docker answer, else 503."""

from __future__ import annotations

from aiohttp import web

from ..health import check_health
from . import keys

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    app = request.app
    report = await check_health(app[keys.LEDGER], app[keys.RUNTIME], app[keys.INSTANCE])
    return web.json_response(report, status=200 if report["ok"] else 503)
