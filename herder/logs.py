"""`GET /daemon/v1/logs/{name}?tail=N&follow=1`: a daemon's output, for its owner.

The body is the container's stdout and stderr as written (plain text,
streamed). With `follow=1` the response stays open and carries new output
until the daemon stops or the client goes away.
"""

from __future__ import annotations

import contextlib

from aiohttp import web

from . import appkeys
from .daemon_exec import find_daemon
from .inputs import plain_int
from .tokens import require_claims

MAX_TAIL = 100_000

routes = web.RouteTableDef()


def _tail(raw: str | None) -> int | None:
    if raw is None or raw in ("", "all"):
        return None
    return plain_int(
        raw, MAX_TAIL, f"tail must be a number of lines from 0 to {MAX_TAIL}, or 'all'"
    )


@routes.get("/daemon/v1/logs/{name}")
async def daemon_logs(request: web.Request) -> web.StreamResponse:
    claims = await require_claims(request)
    tail = _tail(request.query.get("tail"))
    follow = request.query.get("follow", "").lower() in ("1", "true", "yes")
    daemon = await find_daemon(request.app, claims.sub, request.match_info["name"])
    chunks = request.app[appkeys.RUNTIME].logs(daemon.id, tail=tail, follow=follow)
    async with contextlib.aclosing(chunks):
        # Without follow, pull the first chunk before answering, so an engine
        # failure is still a JSON error; with follow, answer at once (the
        # daemon may be silent for a long time).
        first = None if follow else await anext(chunks, None)
        response = web.StreamResponse(
            headers={"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        if first is not None:
            await response.write(first.data)
        async for chunk in chunks:
            await response.write(chunk.data)
        await response.write_eof()
    return response
