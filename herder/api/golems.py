"""The golem routes: the emet script, ls, spawn, reset and kill (see `herder.golems`)."""

from __future__ import annotations

from aiohttp import web

from ..golems import Owner
from ..openapi import (
    BOOL,
    INT,
    NO_CREDITS,
    STR,
    WEBSTRATE,
    Docs,
    Op,
    Schema,
    arr,
    obj,
)
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


# -- OpenAPI docs of these routes (herder.openapi) ---------------------------------

_GOLEM = obj(
    ["Webstrate", "Id", "Name", "State"],
    Webstrate=STR,
    Id=STR,
    Name=STR,
    State=STR,
    Status=STR,
    DebugPort={"type": ["integer", "null"]},
    Created=INT,
    Connected=BOOL,
)
_EMET = Op(
    "The emet script",
    "golems",
    description="`text/javascript` with PUBLIC_URL filled in.",
    responses={200: ("the script", STR, "text/javascript")},
)


def _golem_op(summary: str, created: bool = False) -> Op:
    responses: dict[int, str | tuple[str, Schema]] = {
        200: ("the golem", _GOLEM),
        400: "bad webstrate id",
        401: "a token is required (GOLEM_REQUIRE_TOKEN)",
        404: "no golem (or, for spawn, no golem image)",
    }
    if created:
        responses.update(
            {
                201: ("the new golem", _GOLEM),
                402: NO_CREDITS,
                429: "too many running golems (GOLEM_CAP)",
            }
        )
    return Op(summary, "golems", auth="optional", params=(WEBSTRATE,), responses=responses)


_SPAWN, _RESET, _KILL = (
    _golem_op("Start a webstrate's golem", created=True),
    _golem_op("Replace a golem's container"),
    _golem_op("Stop and remove a golem"),
)
docs: Docs = {
    "/": {"GET": _EMET},
    "/golem/v1/": {"GET": _EMET},
    "/golem/v1/ls": {
        "GET": Op("This herder's golems", "golems", responses={200: ("the golems", arr(_GOLEM))})
    },
    "/golem/v1/spawn/{webstrate}": {"GET": _SPAWN, "POST": _SPAWN},
    "/golem/v1/reset/{webstrate}": {"GET": _RESET, "POST": _RESET},
    "/golem/v1/kill/{webstrate}": {"GET": _KILL, "POST": _KILL},
}
