"""`GET /node/v1/specs`: what this host offers (public: counts, no subject's data)."""

from __future__ import annotations

from aiohttp import web

from ..node import specs
from . import keys

routes = web.RouteTableDef()


@routes.get("/node/v1/specs")
async def specs_route(request: web.Request) -> web.Response:
    app = request.app
    document = await specs(app[keys.RUNTIME], app[keys.INSTANCE], app[keys.SETTINGS].data_dir)
    return web.json_response(document)
