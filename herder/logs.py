"""`GET /daemon/v1/logs/{name}?tail=N&follow=1`: a daemon's output, for its owner.

The body is the container's stdout and stderr as written (plain text,
streamed). With `follow=1` the response stays open and carries new output
until the daemon stops or the client goes away; a subject may have a
limited number of follows and attach sockets open (`herder.streams`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from . import appkeys
from .daemon_exec import find_daemon
from .inputs import plain_int
from .runtime.base import OutputChunk
from .tokens import require_claims

MAX_TAIL = 100_000
# Seconds between checks that a follow's client is still there (and that
# the herder is not shutting down).
DISCONNECT_CHECK = 1.0

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
    if not follow:
        return await _send_logs(request, daemon.id, tail, follow=False)
    streams = request.app[appkeys.STREAMS]
    with streams.hold(claims.sub):
        return await _send_logs(request, daemon.id, tail, follow=True, until=streams.closing)


async def _send_logs(
    request: web.Request,
    ref: str,
    tail: int | None,
    *,
    follow: bool,
    until: asyncio.Event | None = None,
) -> web.StreamResponse:
    """The daemon's output; a follow ends when `until` is set (shutdown)."""
    chunks = request.app[appkeys.RUNTIME].logs(ref, tail=tail, follow=follow)
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
        pump = asyncio.ensure_future(_pump(chunks, response))
        try:
            # A client that goes away is noticed at the next write; a silent
            # daemon writes nothing, so its follow is checked on as well.
            while not pump.done():
                await asyncio.wait({pump}, timeout=DISCONNECT_CHECK)
                if not pump.done() and (_gone(request) or (until and until.is_set())):
                    pump.cancel()
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        if not _gone(request):
            await response.write_eof()
    return response


async def _pump(chunks: AsyncIterator[OutputChunk], response: web.StreamResponse) -> None:
    async for chunk in chunks:
        await response.write(chunk.data)


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
