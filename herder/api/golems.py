"""The golem routes: the emet script, ls, spawn, reset and kill (see `herder.golems`)."""

from __future__ import annotations

from aiohttp import web

from ..golems import Owner
from ..relay import check_webstrate
from . import keys
from .auth import require_claims

routes = web.RouteTableDef()


async def _owner(request: web.Request) -> Owner:
    if not request.app[keys.SETTINGS].golem_require_token:
        return Owner()
    claims = await require_claims(request)
    return Owner(subject=claims.sub, jti=claims.jti, metered=True)


@routes.get("/")
@routes.get("/golem/v1/")
async def emet(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[keys.GOLEMS].emet_script,
        content_type="text/javascript",
        headers={"Cache-Control": "public, max-age=60"},
    )


@routes.get("/golem/v1/ls")
async def ls(request: web.Request) -> web.Response:
    golems = await request.app[keys.GOLEMS].ls()
    return web.json_response([g.to_json() for g in golems])


@routes.get("/golem/v1/spawn/{webstrate}")
@routes.post("/golem/v1/spawn/{webstrate}")
async def spawn(request: web.Request) -> web.Response:
    webstrate = check_webstrate(request.match_info["webstrate"])
    owner = await _owner(request)
    golem, created = await request.app[keys.GOLEMS].spawn(webstrate, owner)
    return web.json_response(golem.to_json(), status=201 if created else 200)


@routes.get("/golem/v1/reset/{webstrate}")
@routes.post("/golem/v1/reset/{webstrate}")
async def reset(request: web.Request) -> web.Response:
    webstrate = check_webstrate(request.match_info["webstrate"])
    owner = await _owner(request)
    golem = await request.app[keys.GOLEMS].reset(webstrate, owner)
    return web.json_response(golem.to_json())


@routes.get("/golem/v1/kill/{webstrate}")
@routes.post("/golem/v1/kill/{webstrate}")
async def kill(request: web.Request) -> web.Response:
    webstrate = check_webstrate(request.match_info["webstrate"])
    owner = await _owner(request)
    golem = await request.app[keys.GOLEMS].kill(webstrate, owner)
    return web.json_response(golem.to_json())
