"""`WS /daemon/v1/attach/{name}`: a WebSocket on a daemon's stdin and output.

Only the daemon's owner may attach. Frames from the client go to the
container's stdin (text as UTF-8, binary as is). Output comes back as text
frames (UTF-8, invalid bytes replaced) or, with `?binary=1`, as raw binary
frames; stdout and stderr are merged in the order the engine delivers them.
The last `?tail=N` lines (default 100, at most 1000) are sent first. The
sessions shared by a container's clients are `herder.attach`'s.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib

from aiohttp import WSMsgType, web

from ..attach import CLOSE_LOST, CLOSE_STDIN, MAX_TAIL, AttachSession, Subscriber
from ..errors import BadRequest, HerderError, Unauthorized
from ..openapi import (
    BAD_INPUT,
    INT,
    NAME,
    STR,
    TOO_MANY_STREAMS,
    UNAUTHORIZED,
    UNKNOWN_DAEMON,
    Docs,
    Op,
    Param,
    obj,
)
from ..peers import PeerService, bridge
from ..runtime.base import OnAnotherNode, OutputChunk
from ..tokens import Claims
from . import keys
from .auth import require_claims, token_from_request
from .inputs import plain_int, query_flag

DEFAULT_TAIL = 100
SEND_BATCH_BYTES = 1 << 18
WS_MAX_MESSAGE = 4 << 20

routes = web.RouteTableDef()


@routes.get("/daemon/v1/attach/{name}")
async def attach(request: web.Request) -> web.StreamResponse:
    claims, bound = await _attach_claims(request)
    daemon = await request.app[keys.DAEMONS].find_running(claims.sub, request.match_info["name"])
    if bound is not None and bound != daemon.container_name:
        raise Unauthorized("this attach ticket is for another daemon")
    tail, binary = attach_query(request)
    async with request.app[keys.STREAMS].hold(claims.sub):
        try:
            return await serve_attach(
                request, daemon.container_id or daemon.container_name, tail, binary
            )
        except OnAnotherNode as where:
            peers = request.app.get(keys.PEERS)
            if peers is None:
                raise
            return await _attach_elsewhere(
                request, peers, where, claims.sub, daemon.container_name, tail, binary
            )


def attach_query(request: web.Request) -> tuple[int, bool]:
    """`?tail=` and `?binary=` of an attach socket."""
    tail = _tail(request.query.get("tail"))
    return tail, query_flag(request.query.get("binary"), strict="binary")


async def _attach_elsewhere(
    request: web.Request,
    peers: PeerService,
    where: OnAnotherNode,
    subject: str,
    name: str,
    tail: int,
    binary: bool,
) -> web.StreamResponse:
    """The daemon runs on another node: carry the socket to the replica there."""
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=WS_MAX_MESSAGE)
    if not ws.can_prepare(request).ok:
        raise BadRequest("expected a WebSocket upgrade")
    query = {"tail": str(tail), "binary": "1" if binary else "0"}
    upstream = await peers.attach_on(where, subject, name, query, max_msg_size=WS_MAX_MESSAGE)
    try:
        await ws.prepare(request)
        with request.app[keys.METRICS].websocket("attach"):
            await bridge(
                ws, upstream, lost=(CLOSE_LOST[0], f"lost the replica on node {where.hostname}")
            )
    finally:
        await upstream.close()
    return ws


async def _attach_claims(request: web.Request) -> tuple[Claims, str | None]:
    """The caller of an attach socket: by `?ticket=` when given (then also
    the container name the ticket is for), else by token."""
    ticket = request.query.get("ticket")
    if ticket is None:
        return await require_claims(request), None
    token, daemon = request.app[keys.TICKETS].redeem(ticket)
    return await request.app[keys.TOKENS].authenticate(token), daemon


@routes.post("/daemon/v1/attach-ticket/{name}")
async def attach_ticket(request: web.Request) -> web.Response:
    """A single-use ticket for this daemon's attach socket (`herder.tickets`),
    so a browser's token never goes in a URL."""
    claims = await require_claims(request)
    daemon = await request.app[keys.DAEMONS].find_running(claims.sub, request.match_info["name"])
    token = token_from_request(request)
    assert token is not None  # require_claims accepted it
    tickets = request.app[keys.TICKETS]
    ticket = tickets.issue(token, daemon.container_name)
    return web.json_response(
        {"ticket": ticket, "expires_in": tickets.seconds}, headers={"Cache-Control": "no-store"}
    )


def _tail(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_TAIL
    return plain_int(raw, MAX_TAIL, f"tail must be an integer from 0 to {MAX_TAIL}")


async def serve_attach(
    request: web.Request, ref: str, tail: int, binary: bool
) -> web.StreamResponse:
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=WS_MAX_MESSAGE)
    if not ws.can_prepare(request).ok:
        raise BadRequest("expected a WebSocket upgrade")
    hub = request.app[keys.ATTACH]
    session, subscriber = await hub.join(ref, tail)
    try:
        await ws.prepare(request)
        with request.app[keys.METRICS].websocket("attach"):
            await _run(ws, session, subscriber, binary)
    finally:
        await hub.leave(session, subscriber)
    return ws


async def _run(
    ws: web.WebSocketResponse, session: AttachSession, subscriber: Subscriber, binary: bool
) -> None:
    sender = asyncio.create_task(_send_output(ws, subscriber, binary))
    receiver = asyncio.create_task(_receive_input(ws, session, subscriber))
    dropped = asyncio.create_task(subscriber.dropped.wait())
    tasks = {sender, receiver, dropped}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task
    if ws.closed:
        return
    try:
        await asyncio.wait_for(
            ws.close(code=subscriber.close_code, message=subscriber.close_reason.encode()), 5
        )
    except (TimeoutError, ConnectionError):
        pass


async def _send_output(ws: web.WebSocketResponse, subscriber: Subscriber, binary: bool) -> None:
    decoders = {
        stream: codecs.getincrementaldecoder("utf-8")(errors="replace") for stream in (1, 2)
    }

    async def send(chunks: list[OutputChunk], final: bool = False) -> None:
        if binary:
            data = b"".join(c.data for c in chunks)
            if data:
                await ws.send_bytes(data)
            return
        text = "".join(decoders.get(c.stream, decoders[1]).decode(c.data) for c in chunks)
        if final:
            text += "".join(d.decode(b"", final=True) for d in decoders.values())
        if text:
            await ws.send_str(text)

    replay = subscriber.replay
    for start in range(0, len(replay), 64):
        await send(replay[start : start + 64])
    subscriber.replay = []
    queue = subscriber.queue
    while True:
        chunk = await queue.get()
        batch: list[OutputChunk] = []
        size = 0
        while chunk is not None:
            batch.append(chunk)
            size += len(chunk.data)
            if size >= SEND_BATCH_BYTES or queue.empty():
                break
            chunk = queue.get_nowait()
        if chunk is None:
            await send(batch, final=True)
            return
        await send(batch)


async def _receive_input(
    ws: web.WebSocketResponse, session: AttachSession, subscriber: Subscriber
) -> None:
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            data = msg.data.encode()
        elif msg.type == WSMsgType.BINARY:
            data = msg.data
        else:
            continue
        try:
            await session.write(data)
        except HerderError:
            subscriber.drop(*CLOSE_STDIN)
            return


# -- OpenAPI docs of these routes (herder.openapi) ---------------------------------

docs: Docs = {
    "/daemon/v1/attach/{name}": {
        "GET": Op(
            "A WebSocket on a daemon's stdin and output",
            "daemons",
            description="Client frames go to stdin; output comes back as text (or "
            "binary with `binary=1`), the last `tail` lines first. A browser, which "
            "cannot send a header on a WebSocket, passes a `ticket` from "
            "`POST /daemon/v1/attach-ticket/{name}` instead of its token.",
            auth="token",
            websocket=True,
            params=(
                NAME,
                Param("tail", "lines of recent output first (default 100, at most 1000)", INT),
                Param("binary", "`1`: raw binary output frames", INT),
                Param("ticket", "a single-use ticket (instead of a token)"),
            ),
            responses={
                101: "switching to the WebSocket",
                400: BAD_INPUT,
                401: UNAUTHORIZED,
                404: UNKNOWN_DAEMON,
                429: TOO_MANY_STREAMS,
            },
        )
    },
    "/daemon/v1/attach-ticket/{name}": {
        "POST": Op(
            "A single-use ticket for the attach WebSocket",
            "daemons",
            description="Valid once, for this daemon, within `expires_in` seconds; the "
            "socket is then opened with `?ticket=`, so the token never goes in a URL.",
            auth="token",
            params=(NAME,),
            responses={
                200: ("the ticket", obj(["ticket", "expires_in"], ticket=STR, expires_in=INT)),
                401: UNAUTHORIZED,
                404: UNKNOWN_DAEMON,
            },
        )
    },
}
