"""`ANY /daemon/v1/proxy/{name}/{path}`: find the daemon `{name}` designates,
then relay to it (`herder.proxy`).

`{name}` is the container name `<name>-<jti>`; with a valid token the
caller's own plain `<name>` works too when it picks exactly one running
daemon. Public by default; `proxy_require_token` makes it owner-only.
"""

from __future__ import annotations

import contextlib

from aiohttp import web

from ..errors import NotFound, Unauthorized
from ..ledger.lookup import RunningDaemon
from ..openapi import (
    Docs,
    Op,
    Param,
)
from ..proxy.forward import PREFIX, forward
from ..tokens import Claims
from . import keys
from .auth import optional_claims, require_claims


async def _proxied_daemon(request: web.Request, name: str) -> RunningDaemon:
    app = request.app
    daemons = app[keys.DAEMONS]
    if app[keys.SETTINGS].proxy_require_token:
        owner = await require_claims(request)
        return await daemons.find_running(owner.sub, name)
    upstreams = app[keys.UPSTREAMS]
    daemon = upstreams.cached(name)
    if daemon is not None:
        return daemon
    daemon = await upstreams.lookup(name, lambda: daemons.running(name))
    if daemon is None:
        # Public mode: a plain name needs the caller's token to say whose it is.
        claims: Claims | None = None
        with contextlib.suppress(Unauthorized):
            claims = await optional_claims(request)
        if claims is None:
            raise NotFound(f"no running daemon named {name!r}")
        return await daemons.find_running(claims.sub, name)
    return daemon


routes = web.RouteTableDef()


@routes.route("*", PREFIX + "/{name}")
@routes.route("*", PREFIX + "/{name}/{path:.*}")
async def proxy(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    daemon = await _proxied_daemon(request, name)
    app = request.app
    return await forward(
        request, daemon, f"{PREFIX}/{name}", app[keys.UPSTREAMS], app[keys.METRICS]
    )


async def proxy_on_own_origin(request: web.Request, name: str) -> web.StreamResponse:
    """A request to `<name>.<proxy_domain>` (the middleware routes it here):
    the daemon's whole path, on an origin of its own."""
    daemon = await _proxied_daemon(request, name)
    app = request.app
    return await forward(request, daemon, "", app[keys.UPSTREAMS], app[keys.METRICS])


# -- OpenAPI docs of these routes (herder.openapi) ---------------------------------

_PROXY = Op(
    "Reverse proxy to the daemon's first port",
    "daemons",
    description="Every method, HTTP and WebSocket; the prefix is stripped. `name` "
    "is the daemon's `Name` from spawn (or the plain name with the owner's token).",
    auth="optional",
    params=(Param("name", "the daemon's Name", where="path"),),
    responses={
        200: "the daemon's answer (any status)",
        404: "unknown or stopped daemon",
        502: "the daemon refused the connection",
        504: "the daemon timed out",
    },
)
docs: Docs = {
    "/daemon/v1/proxy/{name}/{path}": {"*": _PROXY},
    "/daemon/v1/proxy/{name}": {"*": _PROXY},
}
