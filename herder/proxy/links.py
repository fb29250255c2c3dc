"""Keep-alive connections to daemons for the front door (`herder.proxy.front`),
driven by callbacks: no task, stream reader or timer context per request.

A `Link` sends a request head (a GET or HEAD, no body) and reads the answer
as it arrives. An answer without a body, or with a small one of known length
(at most `SMALL` bytes), is handed whole to its `Exchange` (`answered`) and
the link goes back to the pool. Any other answer (chunked, until close, or
larger) has its connection handed to the stream client's pool
(`herder.proxy.lean.UpstreamPool.adopt`), which reads the body piece by
piece (`streaming`). Failures come as `failed`: with `retry` when a
kept-alive link turned out closed before a byte of the answer (the method
is idempotent: the caller sends it once more on a new link), a
`TimeoutError` when no byte came within the read timeout (one timer for all
links, armed for the earliest deadline), `UpstreamBroken` for anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol, cast

from multidict import CIMultiDict

from .lean import (
    HEAD_LIMIT,
    KEEPALIVE,
    MAX_IDLE,
    UpstreamBroken,
    UpstreamPool,
    UpstreamResponse,
    UpstreamUnreachable,
    framing_of,
    parse_head,
    sweep_idle,
)

SMALL = 1 << 16  # answers up to this size are read whole (the proxy's `CHUNK`)


class Exchange(Protocol):
    """Who waits for a link's answer (the front door's connection)."""

    def answered(
        self,
        status: int,
        reason: str,
        headers: CIMultiDict[str],
        length: int | None,
        body: bytes | None,
    ) -> None:
        """The whole answer: `body` None when it has none (HEAD, 204, 304)."""

    def streaming(self, response: UpstreamResponse) -> None:
        """An answer whose body is to be read piece by piece."""

    def failed(self, exc: BaseException, retry: bool) -> None:
        """No answer; `retry`: on a new connection, nothing was read."""


class Link(asyncio.Protocol):
    """One connection to a daemon."""

    def __init__(self, pool: LinkPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.exchange: Exchange | None = None
        self.head: tuple[str, int, str, CIMultiDict[str]] | None = None  # of the answer read
        self.head_request = False
        self.reused = False  # the exchange is not the link's first
        self.used = False
        self.read_timeout = 0.0
        self.deadline = 0.0
        self.idle_since = 0.0
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(
        self, head: bytes, exchange: Exchange, *, head_request: bool, read_timeout: float
    ) -> None:
        assert self.transport is not None
        self.exchange = exchange
        self.head_request = head_request
        self.read_timeout = read_timeout
        self.reused = self.used
        self.used = True
        self.pool.waiting(self)
        self.transport.write(head)

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:  # bytes nobody asked for: the framing is off
            self.close()
            return
        self.buffer += data
        try:
            self._read()
        except UpstreamBroken as exc:
            self._fail(exc, retry=False)

    def _read(self) -> None:
        buffer = self.buffer
        head = self.head
        if head is None:
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > HEAD_LIMIT:
                        raise UpstreamBroken("response head too large")
                    return
                version, status, reason, headers = parse_head(bytes(buffer[: end + 4]))
                del buffer[: end + 4]
                if status >= 200:
                    break
                if status == 101:
                    raise UpstreamBroken("unexpected protocol switch")
                # 1xx informational: the final answer follows.
            head = self.head = (version, status, reason, headers)
        version, status, reason, headers = head
        keep_alive, length, framing, remaining = framing_of(
            version, status, headers, self.head_request
        )
        if framing == "length" and remaining <= SMALL:
            if len(buffer) < remaining:
                return  # the rest of the body is on its way
            body = bytes(buffer[:remaining])
            extra = len(buffer) > remaining
            buffer.clear()
            exchange = self._end()
            if keep_alive and not extra:
                self.pool.release(self)
            else:
                self.close()
            # (No body at all, as opposed to an empty one: HEAD, 204, 304.)
            no_body = self.head_request or length is None
            exchange.answered(status, reason, headers, length, None if no_body else body)
            return
        rest = bytes(buffer)
        buffer.clear()
        exchange = self._end()
        transport, self.transport = self.transport, None
        assert transport is not None
        self.lost = True  # the transport is the stream pool's now
        response = self.pool.streams.adopt(
            self.key,
            transport,
            rest,
            version,
            status,
            reason,
            headers,
            self.head_request,
            self.read_timeout,
        )
        exchange.streaming(response)

    def _end(self) -> Exchange:
        exchange = self.exchange
        assert exchange is not None
        self.exchange = None
        self.head = None
        self.pool.answered(self)
        return exchange

    def _fail(self, exc: BaseException, retry: bool) -> None:
        self.buffer.clear()
        exchange = self._end() if self.exchange is not None else None
        self.close()
        if exchange is not None:
            exchange.failed(exc, retry)

    def timed_out(self) -> None:
        self._fail(TimeoutError("the daemon did not answer in time"), retry=False)

    def eof_received(self) -> bool:
        self._lost_now()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost_now()

    def _lost_now(self) -> None:
        if self.lost:
            return
        self.lost = True
        if self.exchange is not None:
            nothing_read = not self.buffer and self.head is None
            self._fail(
                UpstreamBroken("the daemon closed the connection", nothing_read=nothing_read),
                retry=nothing_read and self.reused,
            )

    def usable(self, now: float) -> bool:
        return (
            not self.lost
            and self.transport is not None
            and not self.transport.is_closing()
            and now - self.idle_since < KEEPALIVE
        )

    def abandon(self) -> None:
        """Drop the exchange unanswered (the link is closed)."""
        if self.exchange is not None:
            self.exchange = None
            self.pool.answered(self)
        self.close()

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class LinkPool:
    """Idle links by (host, port), and the read deadlines of busy ones."""

    def __init__(self, streams: UpstreamPool) -> None:
        self.streams = streams
        self._idle: dict[tuple[str, int], list[Link]] = {}
        self._waiting: dict[Link, None] = {}  # in the order sent: earliest deadline first
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._swept = time.monotonic()
        self._closed = False

    def idle(self, host: str, port: int) -> Link | None:
        """An idle link to (host, port), if one is usable."""
        idle = self._idle.get((host, port))
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            link = idle.pop()
            if link.usable(now):
                return link
            link.close()
        return None

    async def connect(self, host: str, port: int, connect_timeout: float) -> Link:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                _, link = await loop.create_connection(lambda: Link(self, (host, port)), host, port)
        except TimeoutError:
            raise
        except OSError as exc:
            raise UpstreamUnreachable(exc.errno, f"cannot connect to {host}:{port}") from exc
        return link

    def release(self, link: Link) -> None:
        now = time.monotonic()
        idle = self._idle.setdefault(link.key, [])
        if self._closed or len(idle) >= MAX_IDLE:
            link.close()
            return
        link.idle_since = now
        idle.append(link)
        if now - self._swept > KEEPALIVE:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Close idle links past their keep-alive (of daemons not asked since)."""
        self._swept = now
        sweep_idle(self._idle, now)

    # -- read deadlines -----------------------------------------------------------------

    def waiting(self, link: Link) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        link.deadline = loop.time() + link.read_timeout
        self._waiting[link] = None
        if self._timer is None or link.deadline < self._timer_at:
            self._arm(loop, link.deadline)

    def answered(self, link: Link) -> None:
        self._waiting.pop(link, None)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = loop.call_at(when, self._expire), when

    def _expire(self) -> None:
        """Links past their read deadline fail; the timer is armed for the next one."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for link in [link for link in self._waiting if link.deadline <= now]:
            link.timed_out()
        if self._waiting:
            self._arm(loop, min(link.deadline for link in self._waiting))

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for idle in self._idle.values():
            for link in idle:
                with contextlib.suppress(Exception):
                    link.close()
        self._idle.clear()
