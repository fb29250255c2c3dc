"""`GET /node/v1/specs` and `GET /node/v1/nodes`: what this host and the
cluster's nodes offer (public: counts, and only the caller's own workloads)."""

from __future__ import annotations

from aiohttp import web

from ..node import node_specs, nodes, specs
from . import keys
from .auth import optional_claims

routes = web.RouteTableDef()


@routes.get("/node/v1/specs")
async def specs_route(request: web.Request) -> web.Response:
    app = request.app
    ref = request.query.get("node")
    if ref is not None:
        return web.json_response(await node_specs(app[keys.RUNTIME], ref))
    document = await specs(app[keys.RUNTIME], app[keys.INSTANCE], app[keys.SETTINGS].data_dir)
    return web.json_response(document)


@routes.get("/node/v1/nodes")
async def nodes_route(request: web.Request) -> web.Response:
    app = request.app
    claims = await optional_claims(request)
    subject = claims.sub if claims is not None else None
    return web.json_response(await nodes(app[keys.RUNTIME], app[keys.INSTANCE], subject))
