"""`GET /metrics`: the Prometheus exposition of this herder."""

from __future__ import annotations

from aiohttp import web

from ..metrics import CONTENT_TYPE
from ..node import running_counts
from . import keys

routes = web.RouteTableDef()


@routes.get("/metrics")
async def metrics_route(request: web.Request) -> web.Response:
    app = request.app
    runtime, instance = app[keys.RUNTIME], app[keys.INSTANCE]
    body = await app[keys.METRICS].scrape(
        lambda: running_counts(runtime, instance), app[keys.LEDGER].total_charged
    )
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
