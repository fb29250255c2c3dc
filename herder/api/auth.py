"""The caller's token: read from the request, checked by the `TokenService`.

A token comes as `Authorization: Bearer <token>` or as `?token=`; it is
never logged.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import Unauthorized
from ..tokens import Claims
from . import keys


def token_from_request(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip() or " " in value.strip():
            raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'")
        return value.strip()
    return request.query.get("token") or None


async def require_claims(request: web.Request) -> Claims:
    """The caller's validated claims; 401 when the token is missing or bad."""
    token = token_from_request(request)
    if token is None:
        raise Unauthorized("a token is required (Authorization: Bearer, or ?token=)")
    return await request.app[keys.TOKENS].authenticate(token)


async def optional_claims(request: web.Request) -> Claims | None:
    token = token_from_request(request)
    if token is None:
        return None
    return await request.app[keys.TOKENS].authenticate(token)
