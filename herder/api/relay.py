"""The relay's three WebSockets: `/golem/v1/connect/{webstrate}`,
`/minion/v1/connect/{webstrate}` and `/golem/v1/connect-to/{webstrate}/{minion}`
(what each carries is told in `herder.relay`)."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import uuid
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

from ..errors import BadRequest, Conflict, HerderError, NotFound, Unauthorized
from ..openapi import (
    WEBSTRATE,
    Docs,
    Op,
    Param,
)
from ..peers import RelayDirectory, Target, bridge
from ..relay import (
    CLOSE_GOLEM_GONE,
    MINION_TYPE_MAX,
    Frame,
    GolemSession,
    MinionSession,
    Peer,
    Relay,
    check_webstrate,
    event,
    relay_socket,
)
from . import keys

log = logging.getLogger("herder.relay")

routes = web.RouteTableDef()

# Minion ids are the relay's own (uuid4 hex); another is no minion anywhere.
MINION_ID_RE = re.compile(r"[0-9a-f]{32}")
DIRECTORY_POLL = 0.5
"""Seconds between looks, while a minion waits, for its golem on another replica."""


async def _frames(ws: web.WebSocketResponse) -> AsyncIterator[Frame]:
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            yield Frame(msg.data)
        elif msg.type == WSMsgType.BINARY:
            yield Frame(msg.data)


@routes.get("/golem/v1/connect/{webstrate}")
async def golem_connect(request: web.Request) -> web.WebSocketResponse:
    relay = request.app[keys.RELAY]
    webstrate = check_webstrate(request.match_info["webstrate"])
    digest = None
    if not request.app[keys.SETTINGS].golem_open_control:
        key = request.query.get("key", "")
        digest = await request.app[keys.GOLEMS].control_key_digest(webstrate, key)
        if digest is None:
            raise Unauthorized(
                "the control socket of a webstrate's golem needs that golem's key (?key=)"
            )
    ws = relay_socket()
    peer = Peer(ws, f"golem {webstrate}", request.transport)
    session = relay.claim_golem(webstrate, peer, digest)  # 409 before the upgrade
    directory = request.app.get(keys.RELAY_PEERS)
    if directory is not None and not await directory.claim(webstrate):
        relay.release_golem(session, CLOSE_GOLEM_GONE, "golem disconnected")
        raise Conflict(f"a golem is already connected for webstrate {webstrate}")
    peer.on_abort = lambda: relay.release_golem(session, CLOSE_GOLEM_GONE, "golem disconnected")
    with relay.tracking(ws), request.app[keys.METRICS].websocket("golem"):
        try:
            await ws.prepare(request)
            peer.start()
            log.info("golem connected for %s", webstrate)
            async for _frame in _frames(ws):
                pass  # the control socket is one-way
        finally:
            relay.release_golem(session, CLOSE_GOLEM_GONE, "golem disconnected")
            if directory is not None:
                await directory.release(webstrate)
            await peer.aclose()
            log.info("golem disconnected for %s", webstrate)
    return ws


@routes.get("/minion/v1/connect/{webstrate}")
async def minion_connect(request: web.Request) -> web.WebSocketResponse:
    webstrate = check_webstrate(request.match_info["webstrate"])
    minion_type = request.query.get("type", "")
    if len(minion_type) > MINION_TYPE_MAX or not minion_type.isprintable():
        raise BadRequest(f"type must be at most {MINION_TYPE_MAX} printable characters")
    directory = request.app.get(keys.RELAY_PEERS)
    if directory is not None and not request.app[keys.RELAY].connected(webstrate):
        holder = await directory.holder(webstrate)
        if holder is not None:  # the golem is on another replica: carry the socket there
            upstream = await directory.minion_socket(holder, webstrate, minion_type)
            return await _carried(request, upstream, "minion")
    return await serve_minion(request, webstrate, minion_type, directory)


async def _carried(
    request: web.Request, upstream: aiohttp.ClientWebSocketResponse, kind: str
) -> web.WebSocketResponse:
    """Relay a socket to the replica holding the golem (`upstream`, open)."""
    relay = request.app[keys.RELAY]
    ws = relay_socket()
    try:
        with relay.tracking(ws), request.app[keys.METRICS].websocket(kind):
            await ws.prepare(request)
            await bridge(ws, upstream, lost=(CLOSE_GOLEM_GONE, "golem disconnected"))
    finally:
        await upstream.close()
    return ws


async def serve_minion(
    request: web.Request,
    webstrate: str,
    minion_type: str,
    directory: RelayDirectory | None = None,
) -> web.WebSocketResponse:
    """An ad-hoc minion's socket, relayed here (`directory`: or carried to
    the replica where its golem connects while it waits)."""
    relay = request.app[keys.RELAY]
    ws = relay_socket()
    with (
        relay.minion_slot(webstrate),  # 429 before the upgrade
        relay.tracking(ws),
        request.app[keys.METRICS].websocket("minion"),
    ):
        await ws.prepare(request)
        peer = Peer(ws, f"minion of {webstrate}", request.transport)
        peer.start()
        minion = MinionSession(uuid.uuid4().hex, minion_type, peer)
        golem: GolemSession | None = None
        # Read from the start: a minion that leaves while it waits is noticed,
        # and what it sends early waits (bounded) for the golem's data channel.
        reading = asyncio.create_task(_read_minion(ws, minion))
        waiting = asyncio.create_task(_golem_within(relay, webstrate, relay.golem_wait, directory))
        try:
            await asyncio.wait({reading, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done() or peer.closing:
                return ws  # the minion left (or overflowed) before its golem came
            found = waiting.result()
            if isinstance(found, Target) and directory is not None:
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
                await _carry_waiting(ws, peer, minion, directory, found, webstrate)
                return ws
            golem = found if isinstance(found, GolemSession) else None
            if golem is None:
                peer.send(event("golem-not-found", ID=webstrate))
                peer.finish(WSCloseCode.OK, "golem not found")
                return ws
            if not relay.add_minion(golem, minion):  # it left while this one woke up
                minion.golem_gone()
                peer.finish(CLOSE_GOLEM_GONE, "golem disconnected")
                return ws
            peer.on_abort = functools.partial(relay.remove_minion, golem, minion)
            await reading
        finally:
            for task in (reading, waiting):
                task.cancel()
            await asyncio.gather(reading, waiting, return_exceptions=True)
            if golem is not None:
                relay.remove_minion(golem, minion)
            await peer.aclose()
    return ws


async def _golem_within(
    relay: Relay, webstrate: str, seconds: float, directory: RelayDirectory | None
) -> GolemSession | Target | None:
    """The webstrate's golem once its control socket connects here, or the
    other replica it connected to (`directory`), within `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            if directory is None:
                return await relay.wait_for_golem(webstrate)
            local = asyncio.ensure_future(relay.wait_for_golem(webstrate))
            try:
                while True:
                    done, _ = await asyncio.wait({local}, timeout=DIRECTORY_POLL)
                    if done:
                        return local.result()
                    holder = await directory.holder(webstrate)
                    if holder is not None:
                        return holder
            finally:
                local.cancel()
    except TimeoutError:
        return None


async def _carry_waiting(
    ws: web.WebSocketResponse,
    peer: Peer,
    minion: MinionSession,
    directory: RelayDirectory,
    holder: Target,
    webstrate: str,
) -> None:
    """A waiting minion's golem connected to another replica: carry its
    socket there, with what it sent meanwhile first."""
    try:
        upstream = await directory.minion_socket(holder, webstrate, minion.type)
    except HerderError:
        peer.send(event("golem-not-found", ID=webstrate))
        peer.finish(WSCloseCode.OK, "golem not found")
        return
    early = [frame.data for frame in minion.pending]
    minion.pending.clear()
    try:
        await bridge(ws, upstream, lost=(CLOSE_GOLEM_GONE, "golem disconnected"), first=early)
    finally:
        await upstream.close()


async def _read_minion(ws: web.WebSocketResponse, minion: MinionSession) -> None:
    async for frame in _frames(ws):
        minion.to_golem(frame)


@routes.get("/golem/v1/connect-to/{webstrate}/{minion}")
async def golem_connect_to(request: web.Request) -> web.WebSocketResponse:
    webstrate = check_webstrate(request.match_info["webstrate"])
    directory = request.app.get(keys.RELAY_PEERS)
    if directory is not None and not request.app[keys.RELAY].connected(webstrate):
        holder = await directory.holder(webstrate)
        if holder is not None:  # the golem is on another replica: carry the channel there
            minion_id = request.match_info["minion"]
            if not MINION_ID_RE.fullmatch(minion_id):
                raise NotFound(f"no minion {minion_id[:100]} is connected to webstrate {webstrate}")
            if not relay_socket().can_prepare(request).ok:
                raise BadRequest("expected a WebSocket upgrade")
            upstream = await directory.channel_socket(
                holder, webstrate, minion_id, request.query.get("key", "")
            )
            return await _carried(request, upstream, "channel")
    return await serve_channel(request, webstrate, request.match_info["minion"])


async def serve_channel(
    request: web.Request, webstrate: str, minion_id: str
) -> web.WebSocketResponse:
    """The golem's data channel to one of the minions relayed here."""
    relay = request.app[keys.RELAY]
    if not request.app[keys.SETTINGS].golem_open_control:
        relay.check_channel_key(webstrate, request.query.get("key", ""))  # 401
    minion = relay.find_minion(webstrate, minion_id)  # 404/409
    ws = relay_socket()
    if not ws.can_prepare(request).ok:
        raise BadRequest("expected a WebSocket upgrade")
    channel = Peer(ws, f"channel to minion {minion.id}", request.transport)
    channel.on_abort = functools.partial(minion.detach, channel)
    # The minion hears of the channel, and its early frames move to it, only
    # once the upgrade succeeded: a failed one leaves them where they were.
    minion.opening = channel
    with relay.tracking(ws), request.app[keys.METRICS].websocket("channel"):
        try:
            await ws.prepare(request)
            if minion.opening is channel:  # else the minion or golem went meanwhile
                minion.attach(channel)
            channel.start()
            async for frame in _frames(ws):
                minion.peer.send(frame)
        finally:
            if minion.opening is channel:
                minion.opening = None
            minion.detach(channel)
            await channel.aclose()
    return ws


# -- OpenAPI docs of these routes (herder.openapi) ---------------------------------

_WS = {101: "switching to the WebSocket", 400: "bad webstrate id"}
_KEY = Param("key", "the golem's key (not needed with GOLEM_OPEN_CONTROL)")
docs: Docs = {
    "/golem/v1/connect/{webstrate}": {
        "GET": Op(
            "The golem's control socket",
            "golems",
            description="Receives `minion-connected` and `minion-disconnected` events. "
            "Needs the key of the webstrate's running golem (from its page URL's "
            "fragment), unless the herder runs with `GOLEM_OPEN_CONTROL`.",
            websocket=True,
            params=(WEBSTRATE, _KEY),
            responses={
                **_WS,
                401: "not the key of the webstrate's running golem",
                409: "a control socket is open already",
            },
        )
    },
    "/minion/v1/connect/{webstrate}": {
        "GET": Op(
            "An ad-hoc minion's socket",
            "golems",
            websocket=True,
            params=(WEBSTRATE, Param("type", "the minion's type")),
            responses={**_WS, 429: "too many minions on this webstrate"},
        )
    },
    "/golem/v1/connect-to/{webstrate}/{minion}": {
        "GET": Op(
            "The golem's data channel to one minion",
            "golems",
            websocket=True,
            params=(WEBSTRATE, Param("minion", "the minion's id", where="path"), _KEY),
            responses={
                **_WS,
                401: "not the key the golem's control socket presented",
                404: "unknown minion",
                409: "a channel is open already",
            },
        )
    },
}
