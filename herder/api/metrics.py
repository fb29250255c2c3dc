"""`GET /metrics`: the Prometheus exposition of this herder."""

from __future__ import annotations

from aiohttp import web

from ..metrics import CONTENT_TYPE
from ..node import running_counts
from ..openapi import (
    STR,
    TEXT,
    Docs,
    Op,
)
from . import keys

routes = web.RouteTableDef()


@routes.get("/metrics")
async def metrics_route(request: web.Request) -> web.Response:
    app = request.app
    runtime, instance = app[keys.RUNTIME], app[keys.INSTANCE]
    idle = app[keys.MINIONS].pool.is_waiting  # warm containers are not running workloads
    body = await app[keys.METRICS].scrape(
        lambda: running_counts(runtime, instance, idle), app[keys.LEDGER].total_charged
    )
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


# -- OpenAPI docs of these routes (herder.openapi) ---------------------------------

docs: Docs = {
    "/metrics": {
        "GET": Op(
            "Prometheus metrics",
            "operations",
            responses={200: ("Prometheus text exposition", STR, TEXT)},
        )
    }
}
