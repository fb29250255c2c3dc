"""The proxy's front door: plain proxied GETs and HEADs answered straight off
the client's connection; everything else handed to aiohttp's server.

aiohttp's server machinery (request and response objects, the router, the
middleware, the payload writer, a task per request) costs the proxy
several times what relaying a small request does. So a connection starts
here (`FrontConnection`, made by the server `herder.serving` runs): while
its requests are GETs or HEADs for a running daemon's proxy route (the path
route or a `PROXY_DOMAIN` host), without a body, an upgrade or anything the
strict parser (`herder.proxy.wire`) is not sure of, each is answered here
with the route's own header rules (`herder.proxy.forward`) and the same
answer the route would give: the headers aiohttp adds, `X-Request-Id`, the
sandbox policy, cookie scoping, upstream failures as JSON 502/504, one
request log line (`herder.requestlog`) and the metrics. Small answers come
over callback-driven links (`herder.proxy.links`), larger ones are streamed
through the lean client (`herder.proxy.lean`).

The first request that is anything else (another route or method, a body,
a WebSocket, a name no cached or registered daemon has, so that the route
looks for the caller's own, a head the parser does not take, malformed or
not) goes to aiohttp's request handler with the connection and every byte
read from its head on; so does everything after it on that connection (a
connection goes over once, never back). Requests on one connection are
answered in order, one at a time (pipelined ones wait in the buffer, and
none is taken while the client does not read). The server's guards hold
for both (`herder.serving`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, cast

from aiohttp.tcp_helpers import tcp_keepalive
from multidict import CIMultiDict

from ..errors import HerderError
from ..ledger.lookup import RunningDaemon
from ..logfmt import REQUEST_ID
from ..metrics import Metrics
from ..requestlog import CLIENT_CLOSED, log_request
from .forward import (
    CHUNK,
    LEAN_FAILURES,
    copy_downstream_headers,
    request_head,
    upstream_failure,
    upstream_headers,
)
from .lean import UpstreamResponse, UpstreamUnreachable
from .links import Link
from .upstreams import Upstreams
from .wire import (
    HEAD_LIMIT,
    FrontRequest,
    json_answer,
    log_path,
    parse_request,
    response_head,
    stream_head,
)

log = logging.getLogger("herder.proxy")
request_log = logging.getLogger("herder")

# Bytes of pipelined requests buffered while one is answered; reading
# pauses beyond this.
BUFFER_LIMIT = 1 << 16


class Door(Protocol):
    """What the server does for a front connection (`herder.serving`)."""

    keepalive_timeout: float

    def opened(self, connection: FrontConnection, transport: asyncio.Transport) -> bool:
        """Count the connection in; False when it was refused (and closed)."""

    def head_received(self, connection: FrontConnection) -> None:
        """The connection's first request head is in: no header timeout any more."""

    def closed(self, connection: FrontConnection) -> None:
        """The connection is gone."""

    def hand_over(
        self, connection: FrontConnection, transport: asyncio.Transport, data: bytes
    ) -> None:
        """Give the connection to aiohttp's request handler, `data` as read first."""


class ProxyFront:
    """The front door's services; `ready` while the app runs (the server
    makes a `FrontConnection` for each new connection then, aiohttp's own
    request handler otherwise)."""

    def __init__(self, proxy_domain: str, metrics: Metrics, *, enabled: bool = True) -> None:
        self.proxy_domain = proxy_domain
        self.metrics = metrics
        self.enabled = enabled
        self.served = 0  # requests the front door answered itself
        self.upstreams: Upstreams | None = None
        self.load: Callable[[str], Awaitable[RunningDaemon | None]] | None = None

    @property
    def ready(self) -> bool:
        return self.enabled and self.upstreams is not None

    def open(
        self, upstreams: Upstreams, load: Callable[[str], Awaitable[RunningDaemon | None]]
    ) -> None:
        self.upstreams, self.load = upstreams, load

    def close(self) -> None:
        self.upstreams = self.load = None

    def connection(self, door: Door) -> FrontConnection:
        return FrontConnection(self, door)


@dataclass(slots=True, eq=False)
class _Flight:
    """One request on its way, from its head to its log line."""

    request: FrontRequest
    started: float
    daemon: RunningDaemon | None = None
    head: bytes = b""  # to the daemon
    returned: int = 0
    retried: bool = False
    answered: bool = False  # a byte of the answer is written


class FrontConnection(asyncio.Protocol):
    """One client connection, while the front door answers its requests.

    A request for a daemon in the lookup cache with an idle link goes out
    at once and is answered from the link's callbacks (`Exchange`); the
    others take a task first (the lookup, a new connection), and so do
    bodies streamed piece by piece."""

    def __init__(self, front: ProxyFront, door: Door) -> None:
        self._front = front
        self._door = door
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._remote = ""
        self._buffer = bytearray()
        self._flight: _Flight | None = None
        self._task: asyncio.Task[None] | None = None
        self._link: Link | None = None  # carrying the flight's exchange
        self._first = True
        self._gone = False  # the connection is lost, or handed over
        self._closing = False  # no further request is taken
        self._eof = False
        self._reading_paused = False
        self._writing_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._landed: asyncio.Future[None] | None = None  # shutdown waits for the flight
        self._idle_until = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # (uvloop's is no subclass)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self._door.opened(self, transport):
            self._gone = True
            return
        tcp_keepalive(transport)

    def data_received(self, data: bytes) -> None:
        if self._gone or self._closing:
            return
        self._buffer += data
        if self._flight is None and not self._writing_paused:
            self._next()
        elif len(self._buffer) > BUFFER_LIMIT and not self._reading_paused:
            self._reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        # A request being answered still gets its answer; then the connection closes.
        return self._flight is not None

    def connection_lost(self, exc: BaseException | None) -> None:
        # (Not called once handed over: the transport has another protocol then.)
        self._gone = True
        self._cancel_idle_timer()
        self._wake_writer()
        self._door.closed(self)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_writer()
        if self._flight is None and self._buffer and not (self._gone or self._closing):
            self._next()  # pipelined requests wait while the client does not read

    # -- requests -----------------------------------------------------------------------

    def _next(self) -> None:
        """Take the next request off the buffer, if its head is complete."""
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if buffer and (
                len(buffer) > HEAD_LIMIT or buffer.count(b"\n") != buffer.count(b"\r\n")
            ):
                self._hand_over(b"")  # aiohttp judges what this is not
            elif self._eof:
                self._close()
            return
        raw = bytes(buffer[: end + 4])
        del buffer[: end + 4]
        request = parse_request(raw, self._front.proxy_domain)
        if request is None:
            self._hand_over(raw)
            return
        if self._first:
            self._first = False
            self._door.head_received(self)
        flight = self._flight = _Flight(request, time.monotonic())
        if not self._fast(flight):
            self._task = self._loop.create_task(self._prepare(flight))

    def _fast(self, flight: _Flight) -> bool:
        """Send at once if the daemon is cached and a link to it is idle."""
        upstreams = self._front.upstreams
        if upstreams is None:
            return False
        daemon = upstreams.cached(flight.request.name)
        if daemon is None or daemon.first_port is None or not daemon.address:
            return False
        flight.daemon = daemon
        if not self._make_head(flight, daemon):
            return False
        link = upstreams.links.idle(daemon.address, daemon.first_port)
        if link is None:
            return False
        self._send(flight, link, upstreams)
        return True

    async def _prepare(self, flight: _Flight) -> None:
        """The way to a link that takes waiting: the daemon looked up, a new connection."""
        request = flight.request
        REQUEST_ID.set(request.request_id)
        try:
            front = self._front
            upstreams, load = front.upstreams, front.load
            if upstreams is None or load is None:
                self._hand_over(request.raw)
                return
            daemon = flight.daemon
            if daemon is None:
                name = request.name
                daemon = upstreams.cached(name) or await upstreams.lookup(name, lambda: load(name))
                if self._gone:
                    self._finish(flight, CLIENT_CLOSED)
                    return
                if daemon is None or daemon.first_port is None or not daemon.address:
                    self._hand_over(request.raw)  # the route says 404, or finds a caller's own
                    return
                flight.daemon = daemon
            if not flight.head and not self._make_head(flight, daemon):
                self._hand_over(request.raw)  # a header the route refuses
                return
            assert daemon.first_port is not None
            link = (
                None if flight.retried else upstreams.links.idle(daemon.address, daemon.first_port)
            )
            if link is None:
                try:
                    link = await upstreams.links.connect(
                        daemon.address, daemon.first_port, upstreams.connect_timeout
                    )
                except (TimeoutError, OSError) as exc:
                    if isinstance(exc, UpstreamUnreachable):
                        upstreams.forget(daemon.container_name)
                    self._error(flight, upstream_failure(exc, daemon.address))
                    return
            if self._gone:
                upstreams.links.release(link)
                self._finish(flight, CLIENT_CLOSED)
                return
            self._task = None  # the link carries on
            self._send(flight, link, upstreams)
        except asyncio.CancelledError:
            self._finish(flight, CLIENT_CLOSED, close=True)
            raise
        except Exception:
            self._crash(flight)

    def _make_head(self, flight: _Flight, daemon: RunningDaemon) -> bool:
        """The request head to the daemon, by the route's header rules."""
        assert daemon.first_port is not None
        request = flight.request
        headers = upstream_headers(
            request.headers, self._remote, "http", request.host, request.prefix, False
        )
        head = request_head(
            request.method,
            daemon.address,
            daemon.first_port,
            request.upstream_path,
            request.query,
            headers,
        )
        if head is None:
            return False
        flight.head = head
        return True

    def _send(self, flight: _Flight, link: Link, upstreams: Upstreams) -> None:
        self._link = link
        link.send(
            flight.head,
            self,
            head_request=flight.request.method == "HEAD",
            read_timeout=upstreams.read_timeout,
        )

    # -- the link's answers (`Exchange`) ------------------------------------------------

    def answered(
        self,
        status: int,
        reason: str,
        headers: CIMultiDict[str],
        length: int | None,
        body: bytes | None,
    ) -> None:
        flight = self._flight
        self._link = None
        if flight is None or flight.daemon is None:
            return
        request = flight.request
        out: CIMultiDict[str] = CIMultiDict()
        if body is not None:
            copy_downstream_headers(headers, flight.daemon, request.prefix, out, length=False)
            flight.returned = len(body)
            self._write(flight, response_head(status, reason, out, request, len(body)) + body)
        else:
            copy_downstream_headers(headers, flight.daemon, request.prefix, out, length=True)
            self._write(flight, stream_head(status, reason, out, request)[0])
        self._finish(flight, status)

    def streaming(self, response: UpstreamResponse) -> None:
        flight = self._flight
        self._link = None
        if flight is None:
            response.close()
            return
        self._task = self._loop.create_task(self._stream(flight, response))

    def failed(self, exc: BaseException, retry: bool) -> None:
        flight = self._flight
        self._link = None
        if flight is None or flight.daemon is None:
            return
        if retry and not flight.retried:  # a kept-alive link the daemon had closed
            flight.retried = True
            self._task = self._loop.create_task(self._prepare(flight))
            return
        context = REQUEST_ID.set(flight.request.request_id)
        try:
            error = upstream_failure(exc, flight.daemon.address)
        finally:
            REQUEST_ID.reset(context)
        self._error(flight, error)

    async def _stream(self, flight: _Flight, upstream: UpstreamResponse) -> None:
        """An answer whose body is passed on piece by piece, as it comes."""
        request, daemon = flight.request, flight.daemon
        assert daemon is not None
        REQUEST_ID.set(request.request_id)
        status = upstream.status
        try:
            out: CIMultiDict[str] = CIMultiDict()
            copy_downstream_headers(upstream.headers, daemon, request.prefix, out, length=True)
            head, chunked = stream_head(status, upstream.reason, out, request)
            self._write(flight, head)
            try:
                async for chunk in upstream.body.chunks(CHUNK):
                    if self._gone:
                        break
                    flight.returned += len(chunk)
                    self._write(flight, b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                    if self._writing_paused:
                        await self._drain()
                else:
                    if chunked:
                        self._write(flight, b"0\r\n\r\n")
            except LEAN_FAILURES.gone:
                pass  # the caller went away; closing the upstream drops the daemon's side
            except LEAN_FAILURES.broken as exc:
                # A cut body must not look whole: the caller's connection ends unclean.
                log.info("upstream %s broke off: %r", daemon.address, exc)
                self._close()
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            self._close()
            raise
        except Exception:
            status = 500
            self._crash(flight)
        finally:
            upstream.close()
            self._finish(flight, status)

    def _error(self, flight: _Flight, exc: HerderError) -> None:
        """The answer to a request the daemon did not answer: JSON, as the route's."""
        self._write(flight, json_answer(exc.status, exc.payload(), exc.headers, flight.request))
        self._finish(flight, exc.status)

    def _crash(self, flight: _Flight) -> None:
        request = flight.request
        request_log.exception("unhandled error in %s %s", request.method, log_path(request.path))
        if not flight.answered:
            payload = {"error": "internal error", "request_id": request.request_id}
            self._write(flight, json_answer(500, payload, {}, request))
        self._close()
        self._finish(flight, 500)

    def _finish(self, flight: _Flight, status: int, *, close: bool = False) -> None:
        """The flight's log line and metrics; then the next request, if any."""
        if self._flight is not flight:
            return  # finished already
        self._flight = None
        self._task = None
        request = flight.request
        log_request(
            request.method,
            log_path(request.path),
            status,
            time.monotonic() - flight.started,
            request.request_id,
        )
        front = self._front
        front.metrics.request(request.method, status)
        if flight.head:
            front.metrics.proxied(0, flight.returned)
        front.served += 1
        if self._landed is not None and not self._landed.done():
            self._landed.set_result(None)
        if close or self._gone or self._closing or not request.keep_alive:
            self._close()
            return
        if self._eof and not self._buffer:
            self._close()
            return
        if self._reading_paused:
            self._reading_paused = False
            assert self._transport is not None
            self._transport.resume_reading()
        self._idle_until = self._loop.time() + self._door.keepalive_timeout
        if self._idle_timer is None:
            self._idle_timer = self._loop.call_at(self._idle_until, self._idle_check)
        if (self._buffer or self._eof) and not self._writing_paused:
            self._next()

    # -- the connection -----------------------------------------------------------------

    def _write(self, flight: _Flight, data: bytes) -> None:
        flight.answered = True
        transport = self._transport
        if not self._gone and transport is not None and not transport.is_closing():
            transport.write(data)

    async def _drain(self) -> None:
        while self._writing_paused and not self._gone:
            self._drained = self._loop.create_future()
            try:
                await self._drained
            finally:
                self._drained = None
        if self._gone:
            raise ConnectionResetError("the client went away")

    def _wake_writer(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _hand_over(self, raw: bytes) -> None:
        """aiohttp's request handler takes the connection, with `raw` and the buffer."""
        transport = self._transport
        self._flight = None
        self._task = None
        if self._gone or transport is None:
            return
        self._gone = True
        self._cancel_idle_timer()
        data = raw + bytes(self._buffer)
        self._buffer.clear()
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        self._transport = None
        self._door.hand_over(self, transport, data)

    def _close(self) -> None:
        self._closing = True
        self._cancel_idle_timer()
        if self._transport is not None and not self._gone:
            self._transport.close()

    def _idle_check(self) -> None:
        """The keep-alive timer: a connection without a new request head
        within `keepalive_timeout` of its last answer is closed."""
        self._idle_timer = None
        if self._gone or self._closing or self._flight is not None:
            return  # (armed again when this answer is out)
        if self._loop.time() < self._idle_until:
            self._idle_timer = self._loop.call_at(self._idle_until, self._idle_check)
            return
        self._close()

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def close_idle(self) -> None:
        """At server shutdown: no further request; closed at once when idle."""
        self._closing = True
        if self._flight is None:
            self._close()

    async def shutdown(self, timeout: float | None) -> None:
        """At server shutdown: the request being answered gets `timeout`
        seconds, then is cancelled (logged as 499)."""
        self._closing = True
        if self._flight is not None:
            self._landed = self._loop.create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._landed
        flight, task, link = self._flight, self._task, self._link
        if flight is not None:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if link is not None:
                link.abandon()
            self._finish(flight, CLIENT_CLOSED, close=True)
        self._close()
