"""`GET /token/v1/charges`: the caller's recent charges and burn rate.

What the console's credit meter shows: the balance, the credits per second
being charged now for the subject's running metered work (daemons and, in
metered mode, golems; a minion is charged once when it ends), and the last
charge rows, newest first.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from ..errors import BadRequest
from ..openapi import (
    BAD_INPUT,
    INT,
    NUM,
    STR,
    UNAUTHORIZED,
    Docs,
    Op,
    Param,
    arr,
    obj,
)
from . import keys
from .auth import require_claims
from .inputs import plain_int

DEFAULT_LIMIT = 20
MAX_LIMIT = 200

routes = web.RouteTableDef()


@routes.get("/token/v1/charges")
async def charges(request: web.Request) -> web.Response:
    claims = await require_claims(request)
    limit = _limit(request.query.get("limit"))
    usage = await request.app[keys.LEDGER].usage(claims.sub, limit)
    rate = request.app[keys.SETTINGS].credit_rate
    return web.json_response(
        {
            "email": claims.sub,
            "credits": usage.balance.remaining,
            "rate": rate * len(usage.running),
            "running": [{"kind": w.kind, "name": w.name} for w in usage.running],
            "charges": [
                {
                    "id": c.id,
                    "kind": c.kind,
                    "workload": c.workload,
                    "seconds": c.seconds,
                    "credits": c.credits,
                    "at": _utc(c.created_at).isoformat(),
                }
                for c in usage.charges
            ],
        }
    )


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    error = f"limit must be an integer from 1 to {MAX_LIMIT}"
    limit = plain_int(raw, MAX_LIMIT, error)
    if limit < 1:
        raise BadRequest(error)
    return limit


def _utc(at: datetime) -> datetime:
    """SQLite hands timestamps back without a zone; they are UTC."""
    return at if at.tzinfo else at.replace(tzinfo=UTC)


# -- OpenAPI docs of these routes (herder.openapi) ---------------------------------

_CHARGE = obj(
    ["id", "kind", "workload", "seconds", "credits", "at"],
    id=INT,
    kind=STR,
    workload=STR,
    seconds=INT,
    credits=INT,
    at={"type": "string", "format": "date-time"},
)
docs: Docs = {
    "/token/v1/charges": {
        "GET": Op(
            "The caller's recent charges and current burn rate",
            "credits",
            description="`rate` is the credits per second being charged now for the "
            "subject's running metered work (daemons, golems); a running workload's "
            "charge row grows while it runs.",
            auth="token",
            params=(Param("limit", "how many charges, newest first (1 to 200, default 20)", INT),),
            responses={
                200: (
                    "charges and rate",
                    obj(
                        ["email", "credits", "rate", "running", "charges"],
                        email=STR,
                        credits=INT,
                        rate=NUM,
                        running=arr(obj(kind=STR, name=STR)),
                        charges=arr(_CHARGE),
                    ),
                ),
                400: BAD_INPUT,
                401: UNAUTHORIZED,
            },
        )
    }
}
