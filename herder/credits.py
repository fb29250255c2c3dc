"""`GET /token/v1/charges`: the caller's recent charges and burn rate.

What the console's credit meter shows: the balance, the credits per second
being charged now for the subject's running metered work (daemons and, in
metered mode, golems; a minion is charged once when it ends), and the last
charge rows, newest first.
"""

from __future__ import annotations

from datetime import UTC

from aiohttp import web

from . import appkeys
from .errors import BadRequest
from .inputs import plain_int
from .tokens import require_claims

DEFAULT_LIMIT = 20
MAX_LIMIT = 200

routes = web.RouteTableDef()


@routes.get("/token/v1/charges")
async def charges(request: web.Request) -> web.Response:
    claims = await require_claims(request)
    raw = request.query.get("limit")
    limit = DEFAULT_LIMIT
    if raw is not None:
        limit = plain_int(raw, MAX_LIMIT, f"limit must be an integer from 1 to {MAX_LIMIT}")
        if limit < 1:
            raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}")
    ledger = request.app[appkeys.LEDGER]
    rate = request.app[appkeys.SETTINGS].credit_rate
    balance = await ledger.balance(claims.sub)
    running = await ledger.running_metered(claims.sub)
    rows = await ledger.recent_charges(claims.sub, limit)
    return web.json_response(
        {
            "email": claims.sub,
            "credits": balance.remaining,
            "rate": rate * len(running),
            "running": [{"kind": w.kind, "name": w.name} for w in running],
            "charges": [
                {
                    "id": c.id,
                    "kind": c.kind,
                    "workload": c.workload,
                    "seconds": c.seconds,
                    "credits": c.credits,
                    "at": c.created_at.replace(tzinfo=c.created_at.tzinfo or UTC).isoformat(),
                }
                for c in rows
            ],
        }
    )
