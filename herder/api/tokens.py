"""The token routes: `/token/v1/generate`, `/token/v1/balance`, `/token/v1/inspect/{token}`."""

from __future__ import annotations

from aiohttp import web

from ..errors import BadRequest, MethodNotAllowed, NotFound, Unauthorized
from ..openapi import (
    BAD_INPUT,
    INT,
    STR,
    UNAUTHORIZED,
    Body,
    Docs,
    Op,
    Param,
    obj,
)
from . import keys
from .auth import require_claims
from .inputs import read_form, read_json, shown

routes = web.RouteTableDef()


async def _params(request: web.Request) -> dict[str, str]:
    """The query, updated by a POST's JSON object or form (its plain fields)."""
    params = dict(request.query)
    if request.method != "POST" or not request.can_read_body:
        return params
    if request.content_type == "application/json":
        body = await read_json(request, "expected a JSON object")
        if not isinstance(body, dict):
            raise BadRequest("expected a JSON object")
        for key, value in body.items():
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise BadRequest(f"{shown(key)} must be a string or an integer")
            params[key] = str(value)
    else:
        max_bytes = request.app[keys.SETTINGS].max_body_bytes
        for item in await read_form(request, max_bytes):
            if not item.is_file:
                params[item.name] = item.text()
    return params


@routes.route("GET", "/token/v1/generate")
@routes.route("POST", "/token/v1/generate")
async def generate(request: web.Request) -> web.Response:
    if not request.app[keys.SETTINGS].token_password:
        # Before the body is read: a disabled route says so whatever is sent.
        raise MethodNotAllowed("token generation is disabled: no password is configured")
    params = await _params(request)
    token, claims = request.app[keys.TOKENS].generate(
        params.get("password", ""), params.get("email", ""), params.get("credits", "")
    )
    return web.json_response({"token": token, "email": claims.sub, "credits": claims.crd})


@routes.get("/token/v1/balance")
async def balance(request: web.Request) -> web.Response:
    """The caller's subject and remaining credits (a herder extension)."""
    claims = await require_claims(request)
    account = await request.app[keys.LEDGER].balance(claims.sub)
    return web.json_response(
        {
            "email": claims.sub,
            "jti": claims.jti,
            "credits": account.remaining,
            "granted": account.granted,
        }
    )


@routes.get("/token/v1/inspect/{token}")
async def inspect(request: web.Request) -> web.Response:
    token = request.match_info["token"]
    try:
        claims = await request.app[keys.TOKENS].authenticate(token)
    except Unauthorized:
        raise NotFound("invalid token") from None
    balance = await request.app[keys.LEDGER].balance(claims.sub)
    return web.json_response({"token": token, "email": claims.sub, "credits": balance.remaining})


# -- OpenAPI docs of these routes (herder.openapi) ---------------------------------

_TOKEN_REPLY = obj(["token", "email", "credits"], token=STR, email=STR, credits=INT)
_GENERATE = Op(
    "Make a token (password protected)",
    "tokens",
    auth="password",
    params=(
        Param("password", "the herder's TOKEN_PASSWORD"),
        Param("email", "the token's subject"),
        Param("credits", "credits granted on first use", INT),
    ),
    body=Body(
        "the same fields as a form",
        {"application/x-www-form-urlencoded": obj(password=STR, email=STR, credits=INT)},
        required=False,
    ),
    responses={
        200: ("the new token", _TOKEN_REPLY),
        400: BAD_INPUT,
        401: "wrong password",
        405: "no password is configured",
    },
)
docs: Docs = {
    "/token/v1/generate": {"GET": _GENERATE, "POST": _GENERATE},
    "/token/v1/balance": {
        "GET": Op(
            "The caller's subject and remaining credits",
            "credits",
            auth="token",
            responses={
                200: (
                    "the balance",
                    obj(
                        ["email", "jti", "credits", "granted"],
                        email=STR,
                        jti=STR,
                        credits=INT,
                        granted=INT,
                    ),
                ),
                401: UNAUTHORIZED,
            },
        )
    },
    "/token/v1/inspect/{token}": {
        "GET": Op(
            "A token's subject and remaining credits",
            "tokens",
            params=(Param("token", "the JWT", where="path"),),
            responses={200: ("the token", _TOKEN_REPLY), 404: "invalid token"},
        )
    },
}
