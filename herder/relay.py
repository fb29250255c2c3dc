"""The WebSocket relay between a golem and the ad-hoc minions of its webstrate
(the sessions and their registry; the three routes are in `herder.api.relay`).

Three sockets, no token (as in golem-herder v1); the golem's two need the
golem's key (`?key=`, from its page URL; see `herder.golems`) unless
`golem_open_control`:

- `WS /golem/v1/connect/{webstrate}`: the golem's control socket, one per
  webstrate (401 without the key of the webstrate's running golem; a second
  one gets 409 before the upgrade, so a live golem is never displaced). It receives
  `{"Event": "minion-connected", "ID": id, "Type": type}` and
  `{"Event": "minion-disconnected", "ID": id}`; what the golem sends on it is
  ignored.
- `WS /minion/v1/connect/{webstrate}?type=T`: an ad-hoc minion. It waits up to
  `settings.golem_wait` seconds for the golem's control socket; without one it
  gets `{"Event": "golem-not-found", "ID": webstrate}` and is closed. At most
  `settings.relay_minions_per_webstrate` minions (waiting ones included) are
  connected to one webstrate; one more gets 429 before the upgrade.
- `WS /golem/v1/connect-to/{webstrate}/{minion}`: the golem's data channel to
  one minion (one at a time; 401 without the key the control socket
  presented, 404 for an unknown minion, 409 while another is
  open, 400 for a request that is no WebSocket upgrade). Once the upgrade
  succeeded the minion gets `{"Event": "golem-connected"}`, then every
  frame is relayed both ways unchanged, text as text and binary as binary.
  When the channel closes the minion gets `{"Event": "golem-disconnected"}`;
  when the minion goes, the channel gets `{"Event": "minion-disconnected",
  "ID": id}` and is closed.

When the control socket goes (or the golem is killed or reset), every minion
of the webstrate gets `golem-disconnected` and is closed with 1001.

Every socket has a bounded outbound queue drained by its own writer task: a
peer that does not read fast enough is closed with code 1008 and the reason
`send queue full` instead of growing the herder's memory. Frames a minion
sends before the golem opened its data channel wait in a bounded buffer too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from aiohttp import WSCloseCode, web

from .errors import BadRequest, Conflict, NotFound, TooManyRequests, Unauthorized

log = logging.getLogger("herder.relay")

WEBSTRATE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MINION_TYPE_MAX = 128

QUEUE_FRAMES = 1024
"""Frames one direction may hold before its reader counts as too slow."""
QUEUE_BYTES = 8 << 20
"""Bytes one direction may hold before its reader counts as too slow."""
MAX_FRAME_BYTES = 4 << 20
HEARTBEAT = 20.0
CLOSE_TIMEOUT = 5.0

CLOSE_SLOW_PEER = WSCloseCode.POLICY_VIOLATION  # 1008
CLOSE_GOLEM_GONE = WSCloseCode.GOING_AWAY  # 1001


def check_webstrate(webstrate: str) -> str:
    """Webstrate ids are `[A-Za-z0-9_-]{1,64}`; anything else is a 400."""
    if not WEBSTRATE_RE.fullmatch(webstrate):
        raise BadRequest("webstrate ids are 1 to 64 characters of A-Z, a-z, 0-9, _ and -")
    return webstrate


def relay_socket() -> web.WebSocketResponse:
    """A relay WebSocket, with the relay's heartbeat, frame size and close timeout."""
    return web.WebSocketResponse(
        heartbeat=HEARTBEAT, max_msg_size=MAX_FRAME_BYTES, timeout=CLOSE_TIMEOUT
    )


def event(name: str, **fields: str) -> Frame:
    return Frame(json.dumps({"Event": name, **fields}))


@dataclass(frozen=True)
class Frame:
    """One WebSocket message: `str` is a text frame, `bytes` a binary one.

    `size` is what it weighs on the wire, in bytes (text as UTF-8: an emoji is
    four), which is what the queue bounds count.
    """

    data: str | bytes
    size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        data = self.data
        size = len(data) if isinstance(data, bytes) or data.isascii() else len(data.encode())
        object.__setattr__(self, "size", size)


class Peer:
    """One relay WebSocket with a bounded outbound queue and its writer task.

    `send` never blocks: it queues, or, when the queue is full, aborts the
    socket with 1008. Frames queued before `start` (the upgrade) wait for it.
    `finish` closes after what is queued is sent; `abort` drops the queue,
    calls `on_abort` (so the relay forgets the peer at once) and closes now;
    a peer that does not take the close frame within `CLOSE_TIMEOUT` has its
    connection cut. `aclose` (from the handler's `finally`) waits for the
    writer, at most `CLOSE_TIMEOUT` before it cuts the connection, so no task
    outlives its socket.
    """

    def __init__(
        self, ws: web.WebSocketResponse, label: str, transport: asyncio.Transport | None
    ) -> None:
        self.ws = ws
        self.label = label
        self.on_abort: Callable[[], None] | None = None
        self._transport = transport  # the request's, cut when the peer does not read
        self._queue: deque[Frame] = deque()
        self._bytes = 0
        self._wakeup = asyncio.Event()
        self._close: tuple[int, str] | None = None
        self._writer: asyncio.Task[None] | None = None

    @property
    def closing(self) -> bool:
        return self._close is not None or self.ws.closed

    def start(self) -> None:
        """Start writing; call once the socket is prepared."""
        if self._writer is None:
            self._writer = asyncio.create_task(self._pump(), name=f"relay-writer {self.label}")

    def send(self, frame: Frame) -> None:
        if self.closing:
            return
        if len(self._queue) >= QUEUE_FRAMES or self._bytes + frame.size > QUEUE_BYTES:
            log.warning("relay: %s reads too slowly; closing it", self.label)
            self.abort(CLOSE_SLOW_PEER, "send queue full: peer too slow")
            return
        self._queue.append(frame)
        self._bytes += frame.size
        self._wakeup.set()

    def finish(self, code: int = WSCloseCode.OK, reason: str = "") -> None:
        """Close once the queued frames are sent."""
        if self._close is None:
            self._close = (code, reason)
            self._wakeup.set()

    def abort(self, code: int, reason: str) -> None:
        """Drop what is queued and close now."""
        self._queue.clear()
        self._bytes = 0
        if self._close is None:
            self._close = (code, reason)
        if self.on_abort is not None:
            on_abort, self.on_abort = self.on_abort, None
            on_abort()
        if self._writer is not None and not self._writer.done():
            # The writer may be stuck in a send to a peer that does not read;
            # a send cancelled while it waits for the transport to drain has
            # already written whole frames.
            self._writer.cancel()
            self._writer = asyncio.create_task(self._close_ws(), name=f"relay-close {self.label}")
        self._wakeup.set()

    async def aclose(self) -> None:
        """Send what is queued, close the socket, and wait for the writer.

        The writer gets `CLOSE_TIMEOUT` seconds: a send to a peer that does
        not read (its TCP window shut) never returns, and the transport that
        aiohttp closes when a heartbeat fails waits for that peer forever. So
        a writer still busy then is cancelled and the connection cut.
        """
        self.finish(WSCloseCode.OK)
        writer = self._writer
        if writer is not None:
            _done, pending = await asyncio.wait({writer}, timeout=CLOSE_TIMEOUT)
            if pending:
                log.warning("relay: %s does not take its frames; cutting it", self.label)
                writer.cancel()
                self._cut()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        if self.ws.prepared and not self.ws.closed:
            await self._close_ws()

    def _cut(self) -> None:
        """Drop the connection and what its transport still holds."""
        if self._transport is not None:
            self._transport.abort()

    async def _pump(self) -> None:
        while True:
            while self._queue:
                frame = self._queue.popleft()
                self._bytes -= frame.size
                try:
                    if isinstance(frame.data, str):
                        await self.ws.send_str(frame.data)
                    else:
                        await self.ws.send_bytes(frame.data)
                except (ConnectionError, RuntimeError):
                    return  # the peer went; its handler cleans up
            if self._close is not None:
                await self._close_ws()
                return
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _close_ws(self) -> None:
        code, reason = self._close or (WSCloseCode.OK, "")
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.ws.close(code=code, message=reason.encode())
        except TimeoutError:
            # The peer does not read: drop what the transport still holds.
            self._cut()
        except (ConnectionError, RuntimeError):
            pass


@dataclass(eq=False)
class MinionSession:
    id: str
    type: str
    peer: Peer
    channel: Peer | None = None
    # A data channel whose upgrade is under way: it holds the minion's place
    # (a second one is a 409) while early frames still wait in `pending`.
    opening: Peer | None = None
    # Frames the minion sent before the golem opened its data channel.
    pending: deque[Frame] = field(default_factory=deque)
    pending_bytes: int = 0
    told_golem_gone: bool = False

    def to_golem(self, frame: Frame) -> None:
        if self.channel is not None:
            self.channel.send(frame)
            return
        if len(self.pending) >= QUEUE_FRAMES or self.pending_bytes + frame.size > QUEUE_BYTES:
            log.warning("relay: minion %s sends with no golem reading; closing it", self.id)
            self.peer.abort(CLOSE_SLOW_PEER, "send queue full: no golem reading")
            return
        self.pending.append(frame)
        self.pending_bytes += frame.size

    def attach(self, channel: Peer) -> None:
        """The data channel is open (upgraded): relay to it from now on."""
        self.opening = None
        self.channel = channel
        self.told_golem_gone = False
        self.peer.send(event("golem-connected"))
        while self.pending:
            channel.send(self.pending.popleft())
        self.pending_bytes = 0

    def take_channels(self) -> list[Peer]:
        """Forget the data channel, open or opening, and return it."""
        channels = [c for c in (self.channel, self.opening) if c is not None]
        self.channel = self.opening = None
        return channels

    def detach(self, channel: Peer) -> None:
        """The data channel closed: tell the minion, once."""
        if self.channel is channel:
            self.channel = None
            self.golem_gone()

    def golem_gone(self) -> None:
        if not self.told_golem_gone:
            self.told_golem_gone = True
            self.peer.send(event("golem-disconnected"))


@dataclass(eq=False)
class GolemSession:
    webstrate: str
    control: Peer
    minions: dict[str, MinionSession] = field(default_factory=dict)
    # The digest of the golem's secret its control socket presented (None
    # with `golem_open_control`): its data channels must present it too.
    key_digest: str | None = None


def key_digest(key: str) -> str:
    """What the herder keeps of a golem's secret."""
    return hashlib.sha256(key.encode()).hexdigest()


class Relay:
    """The in-memory registry of connected golems and minions (one per herder)."""

    def __init__(self, golem_wait: float, minions_per_webstrate: int) -> None:
        self.golem_wait = golem_wait
        self.minions_per_webstrate = minions_per_webstrate
        self._golems: dict[str, GolemSession] = {}
        # Minion sockets per webstrate, those still waiting for a golem too.
        self._minion_counts: dict[str, int] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._sockets: set[web.WebSocketResponse] = set()

    def connected(self, webstrate: str) -> bool:
        return webstrate in self._golems

    def webstrates(self) -> list[str]:
        """The webstrates whose golem's control socket is connected here."""
        return list(self._golems)

    # -- golem control socket --------------------------------------------------

    def claim_golem(
        self, webstrate: str, control: Peer, key_digest: str | None = None
    ) -> GolemSession:
        """Register the control socket; 409 when the webstrate has one (a live
        golem is never displaced)."""
        if webstrate in self._golems:
            raise Conflict(f"a golem is already connected for webstrate {webstrate}")
        session = GolemSession(webstrate, control, key_digest=key_digest)
        self._golems[webstrate] = session
        for waiter in self._waiters.pop(webstrate, set()):
            if not waiter.done():
                waiter.set_result(None)
        return session

    def release_golem(self, session: GolemSession, code: int, reason: str) -> None:
        """The golem went: unregister it and close its minions and channels."""
        if self._golems.get(session.webstrate) is session:
            del self._golems[session.webstrate]
        for minion in list(session.minions.values()):
            for channel in minion.take_channels():
                channel.finish(code, reason)
            minion.golem_gone()
            minion.peer.finish(code, reason)
        session.minions.clear()
        session.control.finish(code, reason)

    def drop_golem(self, webstrate: str) -> None:
        """Called when the golem's container is killed or reset."""
        session = self._golems.get(webstrate)
        if session is not None:
            self.release_golem(session, CLOSE_GOLEM_GONE, "golem stopped")

    async def wait_for_golem(self, webstrate: str) -> GolemSession:
        """The webstrate's golem, once its control socket is connected."""
        loop = asyncio.get_running_loop()
        while (session := self._golems.get(webstrate)) is None:
            waiter: asyncio.Future[None] = loop.create_future()
            waiters = self._waiters.setdefault(webstrate, set())
            waiters.add(waiter)
            try:
                await waiter
            finally:
                waiters.discard(waiter)
                if not waiters and self._waiters.get(webstrate) is waiters:
                    del self._waiters[webstrate]
        return session

    # -- minions -----------------------------------------------------------------

    @contextlib.contextmanager
    def minion_slot(self, webstrate: str) -> Iterator[None]:
        """Hold one of the webstrate's minion places; 429 when none is free."""
        count = self._minion_counts.get(webstrate, 0)
        if count >= self.minions_per_webstrate:
            raise TooManyRequests(
                f"webstrate {webstrate} already has {count} minions connected, the most allowed"
            )
        self._minion_counts[webstrate] = count + 1
        try:
            yield
        finally:
            left = self._minion_counts[webstrate] - 1
            if left:
                self._minion_counts[webstrate] = left
            else:
                del self._minion_counts[webstrate]

    def add_minion(self, golem: GolemSession, minion: MinionSession) -> bool:
        """Announce the minion to its golem; False when that golem has gone."""
        if self._golems.get(golem.webstrate) is not golem:
            return False
        golem.minions[minion.id] = minion
        golem.control.send(event("minion-connected", ID=minion.id, Type=minion.type))
        return True

    def remove_minion(self, golem: GolemSession, minion: MinionSession) -> None:
        if golem.minions.pop(minion.id, None) is None:
            return  # the golem went first and already closed everything
        golem.control.send(event("minion-disconnected", ID=minion.id))
        for channel in minion.take_channels():
            channel.send(event("minion-disconnected", ID=minion.id))
            channel.finish(WSCloseCode.OK, "minion disconnected")

    def check_channel_key(self, webstrate: str, key: str) -> None:
        """401 unless `key` is the secret the webstrate's connected golem
        presented (not called with `golem_open_control`)."""
        session = self._golems.get(webstrate)
        expected = session.key_digest if session is not None else None
        if not expected or not key or not hmac.compare_digest(key_digest(key), expected):
            raise Unauthorized("a golem's data channel needs the golem's key (?key=)")

    def find_minion(self, webstrate: str, minion_id: str) -> MinionSession:
        session = self._golems.get(webstrate)
        minion = session.minions.get(minion_id) if session else None
        if minion is None:
            raise NotFound(f"no minion {minion_id} is connected to webstrate {webstrate}")
        if minion.channel is not None or minion.opening is not None:
            raise Conflict(f"minion {minion_id} already has a data channel")
        return minion

    # -- sockets -------------------------------------------------------------------

    @contextlib.contextmanager
    def tracking(self, ws: web.WebSocketResponse) -> Iterator[None]:
        self._sockets.add(ws)
        try:
            yield
        finally:
            self._sockets.discard(ws)

    async def shutdown(self) -> None:
        """Close every relay socket (on application shutdown), all at once."""

        async def close(ws: web.WebSocketResponse) -> None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

        await asyncio.gather(*(close(ws) for ws in list(self._sockets)))
