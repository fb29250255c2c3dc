"""`WS /daemon/v1/attach/{name}`: a WebSocket on a daemon's stdin and output.

Only the daemon's owner may attach. Frames from the client go to the
container's stdin (text as UTF-8, binary as is). Output comes back as text
frames (UTF-8, invalid bytes replaced) or, with `?binary=1`, as raw binary
frames; stdout and stderr are merged in the order the engine delivers them.
The last `?tail=N` lines (default 100, at most 1000) are sent first.

One engine attachment per container is shared by all its clients
(`AttachSession`): it keeps a ring of recent output (at most 1 MiB) for
replays and fans new output out to a bounded queue per client. Policy for a
slow client: when its queue is full, the session waits up to
`SLOW_CLIENT_GRACE` seconds for room (output is never skipped, and a fast
client slows the container down rather than growing memory); a client still
behind after that is disconnected with close code 1008 and a reason saying
so. So memory per client is bounded by `QUEUE_FRAMES` engine frames.

When the container stops, each client gets the output still queued for it,
then a close with code 1001 and the reason "daemon stopped". Replays come
from the session's ring; a new session seeds its ring from the engine's
logs right after attaching, so output written in that instant may appear
twice in a replay (never in the live stream).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable

from aiohttp import WSMsgType, web

from . import appkeys
from .errors import BadRequest, HerderError, ServiceUnavailable
from .inputs import plain_int
from .keyedlocks import KeyedLocks
from .proxy import find_daemon
from .runtime.base import Attachment, OutputChunk, Runtime
from .tickets import attach_claims, check_ticket_daemon

log = logging.getLogger("herder.attach")

DEFAULT_TAIL = 100
MAX_TAIL = 1000
RING_BYTES = 1 << 20
QUEUE_FRAMES = 64
SLOW_CLIENT_GRACE = 5.0
SEND_BATCH_BYTES = 1 << 18
WS_MAX_MESSAGE = 4 << 20

CLOSE_STOPPED = (1001, "daemon stopped")
CLOSE_LOST = (1011, "lost the connection to the daemon")
CLOSE_SLOW = (1008, "client too slow: it fell behind the daemon's output")
CLOSE_SHUTDOWN = (1001, "herder shutting down")
CLOSE_STDIN = (1011, "cannot write to the daemon's stdin")


class Subscriber:
    """One attached client: a replay to send first, then a bounded queue of
    live output ending with None. `dropped` is set when it must go at once."""

    def __init__(self, replay: list[OutputChunk]) -> None:
        self.replay = replay
        self.queue: asyncio.Queue[OutputChunk | None] = asyncio.Queue(QUEUE_FRAMES)
        self.dropped = asyncio.Event()
        self.close_code, self.close_reason = CLOSE_STOPPED

    def drop(self, code: int, reason: str) -> None:
        if not self.dropped.is_set():
            self.close_code, self.close_reason = code, reason
            self.dropped.set()


class AttachSession:
    """The shared attachment of one container and its clients."""

    def __init__(self, hub: AttachHub, ref: str, attachment: Attachment) -> None:
        self.hub = hub
        self.ref = ref
        self.attachment = attachment
        self.subscribers: set[Subscriber] = set()
        self.finished = False
        self._closing = False
        self._ring: deque[OutputChunk] = deque()
        self._ring_bytes = 0
        self._write_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, hub: AttachHub, ref: str) -> AttachSession:
        attachment = await hub.runtime.attach(ref)
        session = cls(hub, ref, attachment)
        try:
            async for chunk in hub.runtime.logs(ref, tail=MAX_TAIL, follow=False):
                session._remember(chunk)
        except BaseException:
            await attachment.close()
            raise
        session._reader = asyncio.create_task(session._read_loop(), name=f"attach {ref}")
        return session

    def subscribe(self, tail: int) -> Subscriber:
        """A new client: its replay and its place in the fan-out, taken
        together (no await in between, so nothing is missed or repeated)."""
        subscriber = Subscriber(last_lines(self._ring, tail))
        self.subscribers.add(subscriber)
        return subscriber

    async def write(self, data: bytes) -> None:
        async with self._write_lock:
            await self.attachment.write(data)

    def _remember(self, chunk: OutputChunk) -> None:
        self._ring.append(chunk)
        self._ring_bytes += len(chunk.data)
        while self._ring_bytes > RING_BYTES and len(self._ring) > 1:
            self._ring_bytes -= len(self._ring.popleft().data)

    async def _read_loop(self) -> None:
        end = CLOSE_LOST
        try:
            while not self._closing:
                chunk = await self.attachment.read()
                if chunk is None:
                    break
                self._remember(chunk)
                for subscriber in list(self.subscribers):
                    await self._offer(subscriber, chunk)
            info = await self.hub.runtime.inspect(self.ref)
            end = CLOSE_STOPPED if info is None or info.state != "running" else CLOSE_LOST
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("attach session of %s failed", self.ref)
        finally:
            self.finished = True
        for subscriber in list(self.subscribers):
            subscriber.close_code, subscriber.close_reason = end
            await self._offer(subscriber, None)
        await self.hub.forget(self)
        await self.attachment.close()

    async def _offer(self, subscriber: Subscriber, chunk: OutputChunk | None) -> None:
        if subscriber.dropped.is_set():
            return
        try:
            subscriber.queue.put_nowait(chunk)
        except asyncio.QueueFull:
            try:
                await asyncio.wait_for(subscriber.queue.put(chunk), SLOW_CLIENT_GRACE)
            except TimeoutError:
                subscriber.drop(*CLOSE_SLOW)

    async def close(self) -> None:
        # The flag as well as the cancel: 3.11's wait_for may swallow a cancel.
        self._closing = True
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.attachment.close()


class AttachHub:
    """Every attach session of the herder, one per container.

    Joins and leaves of one container take turns (a lock per container, so
    a slow engine call for one daemon holds up no other's clients)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._sessions: dict[str, AttachSession] = {}
        self._locks = KeyedLocks()
        self._closed = False

    async def join(self, ref: str, tail: int) -> tuple[AttachSession, Subscriber]:
        """Attach a client to container `ref` (raises `NotFound` unless it runs)."""
        async with self._locks.hold(ref):
            session = self._sessions.get(ref)
            if session is None or session.finished:
                session = await AttachSession.open(self, ref)
                if self._closed:
                    await session.close()
                    raise ServiceUnavailable("the herder is shutting down")
                self._sessions[ref] = session
            return session, session.subscribe(tail)

    async def leave(self, session: AttachSession, subscriber: Subscriber) -> None:
        """A client is gone; the last one out detaches from the container."""
        async with self._locks.hold(session.ref):
            session.subscribers.discard(subscriber)
            if session.subscribers or self._sessions.get(session.ref) is not session:
                return
            del self._sessions[session.ref]
        await session.close()

    async def forget(self, session: AttachSession) -> None:
        async with self._locks.hold(session.ref):
            if self._sessions.get(session.ref) is session:
                del self._sessions[session.ref]

    async def close(self) -> None:
        self._closed = True
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            for subscriber in list(session.subscribers):
                subscriber.drop(*CLOSE_SHUTDOWN)
            await session.close()


async def attach_hub_context(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: attach sessions end (clients told why) before the runtime closes."""
    hub = AttachHub(app[appkeys.RUNTIME])
    app[appkeys.ATTACH] = hub
    yield
    await hub.close()


def last_lines(chunks: Iterable[OutputChunk], n: int) -> list[OutputChunk]:
    """The chunks holding the last `n` lines (a final unterminated line counts)."""
    chunks = list(chunks)
    if n <= 0 or not chunks:
        return []
    joined = b"".join(c.data for c in chunks)
    end = len(joined) - 1 if joined.endswith(b"\n") else len(joined)
    cut = end
    for _ in range(n):
        cut = joined.rfind(b"\n", 0, cut)
        if cut < 0:
            break
    start = cut + 1
    result: list[OutputChunk] = []
    offset = 0
    for chunk in chunks:
        chunk_end = offset + len(chunk.data)
        if chunk_end > start:
            result.append(OutputChunk(chunk.stream, chunk.data[max(start - offset, 0) :]))
        offset = chunk_end
    return result


# -- the route ----------------------------------------------------------------------

routes = web.RouteTableDef()


@routes.get("/daemon/v1/attach/{name}")
async def attach(request: web.Request) -> web.StreamResponse:
    claims, bound = await attach_claims(request)
    daemon = await find_daemon(request.app, request.match_info["name"], claims.sub)
    check_ticket_daemon(bound, daemon.container_name)
    tail = _tail(request.query.get("tail"))
    binary = _flag("binary", request.query.get("binary"))
    with request.app[appkeys.STREAMS].hold(claims.sub):
        return await serve_attach(
            request, daemon.container_id or daemon.container_name, tail, binary
        )


def _tail(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_TAIL
    return plain_int(raw, MAX_TAIL, f"tail must be an integer from 0 to {MAX_TAIL}")


def _flag(name: str, raw: str | None) -> bool:
    value = (raw or "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise BadRequest(f"{name} must be 1 or 0")


async def serve_attach(
    request: web.Request, ref: str, tail: int, binary: bool
) -> web.StreamResponse:
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=WS_MAX_MESSAGE)
    if not ws.can_prepare(request).ok:
        raise BadRequest("expected a WebSocket upgrade")
    hub = request.app[appkeys.ATTACH]
    session, subscriber = await hub.join(ref, tail)
    try:
        await ws.prepare(request)
        with request.app[appkeys.METRICS].websocket("attach"):
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
