"""Attach sessions behind `WS /daemon/v1/attach/{name}` (a WebSocket on a
daemon's stdin and output, served by `herder.api.attach`).

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
import contextlib
import logging
from collections import deque
from collections.abc import Iterable

from .errors import ServiceUnavailable
from .keyedlocks import KeyedLocks
from .runtime.base import Attachment, OutputChunk, Runtime

log = logging.getLogger("herder.attach")

MAX_TAIL = 1000
RING_BYTES = 1 << 20
QUEUE_FRAMES = 64
SLOW_CLIENT_GRACE = 5.0

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
