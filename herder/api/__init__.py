"""The HTTP layer: everything that knows `web.Request` and the app keys.

One module per resource with its route table; a handler parses the request,
calls one service method and serializes the answer. `ROUTES` lists the
tables in the order the router tries them (the `GET /` script route of
`golems` before the proxy's catch-all).
"""

from __future__ import annotations

from aiohttp import web

from . import attach, daemons, golems, health, metrics, minions, node, proxy, relay, tokens

ROUTES: tuple[web.RouteTableDef, ...] = (
    health.routes,
    metrics.routes,
    node.routes,
    daemons.routes,
    tokens.routes,
    minions.routes,
    relay.routes,
    golems.routes,
    proxy.routes,
    attach.routes,
)
