"""The token routes: `/token/v1/generate`, `/token/v1/balance`, `/token/v1/inspect/{token}`."""

from __future__ import annotations

import hmac

from aiohttp import web

from ..errors import BadRequest, MethodNotAllowed, NotFound, Unauthorized
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
    settings = request.app[keys.SETTINGS]
    if not settings.token_password:
        raise MethodNotAllowed("token generation is disabled: no password is configured")
    params = await _params(request)
    given = params.get("password", "")
    if not hmac.compare_digest(given.encode(), settings.token_password.encode()):
        raise Unauthorized("wrong password")
    raw_credits = params.get("credits", "")
    try:
        credits = int(raw_credits) if raw_credits else settings.default_credits
    except ValueError:
        raise BadRequest("credits must be an integer") from None
    token, claims = request.app[keys.TOKENS].create(params.get("email", ""), credits)
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
