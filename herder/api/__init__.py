"""The HTTP layer: everything that knows `web.Request` and the app keys.

One module per resource with its route table; a handler parses the request,
calls one service method and serializes the answer; next to its routes it
declares their OpenAPI docs (`docs`, see `herder.openapi`). `ROUTES` lists the
tables in the order the router tries them (the `GET /` script route of
`golems` before the proxy's catch-all).
"""

from __future__ import annotations

from aiohttp import web

from ..openapi import Docs
from . import (
    attach,
    console,
    credits,
    daemons,
    golems,
    health,
    metrics,
    minions,
    node,
    peer,
    proxy,
    relay,
    tokens,
)

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
    peer.routes,
    credits.routes,
    console.routes,
)
# Each module's OpenAPI docs, next to its routes: `/openapi.json` is built
# from the router and these, and refuses a route without docs.
DOCS: tuple[Docs, ...] = tuple(
    module.docs
    for module in (
        health,
        metrics,
        node,
        tokens,
        credits,
        minions,
        daemons,
        attach,
        proxy,
        golems,
        relay,
        peer,
        console,
    )
)
