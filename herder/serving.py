"""The HTTP server under the application: `herder serve` runs the app with
these guards, which aiohttp's own server does not have.

- **Descriptors**: the soft open-files limit is raised to the hard one at
  start (logged); the herder takes at most half of what is left after a
  reserve of `FD_RESERVE` as client connections (each may need a second
  descriptor for its upstream), so engine calls, the database and proxied
  connections always find descriptors.
- **Per-client cap**: at most `connections_per_client` open connections from
  one address (default: a quarter of the connections above); one more is
  answered 503 and closed at once, so one client's slow connections cannot
  lock the others out.
- **Header read timeout**: a connection's first request head must be in
  within `header_timeout` seconds (408 and closed); later requests on a
  keep-alive connection within the keep-alive timeout (`KEEPALIVE_TIMEOUT`).
- **Front door**: with a `Front` (the proxy's, `herder.proxy.front`), a
  new connection starts with the front's protocol, which answers what it
  can itself and hands the connection (with the bytes it read) to aiohttp's
  request handler otherwise; the guards above count and time both alike.
- **Body read deadline**: while a handler waits for a request body, the
  client must send at least `body_min_rate` bytes a second, counted over
  windows of `body_rate_window` seconds; a slower one is cut (the handler's
  read fails with 408 and the connection is closed). Windows in which the
  herder itself does not read (the body waits in its buffer) do not count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import streams, web, web_protocol

from .errors import RequestTimeout
from .settings import Settings

log = logging.getLogger("herder.serve")

FD_RESERVE = 256
"""Descriptors kept for anything but client connections (engine, database, files)."""
KEEPALIVE_TIMEOUT = 75.0
SWEEP_EVERY = 1.0

_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
)
_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
)


def _answer(template: bytes, error: str) -> bytes:
    body = b'{"error": "' + error.encode() + b'"}'
    return template % (len(body), body)


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        log.info("open files limit: %s (hard %s)", soft, hard)
        return soft if soft != resource.RLIM_INFINITY else target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("open files limit stays %s (hard %s): %s", soft, hard, exc)
        return soft
    log.info("open files limit raised from %s to %s (the hard limit)", soft, target)
    return target


@dataclass(frozen=True)
class Guards:
    """The server's limits, from settings and the open-files limit."""

    max_connections: int
    per_client: int
    header_timeout: float
    body_min_rate: int
    body_rate_window: float

    @classmethod
    def from_settings(cls, settings: Settings, open_files: int) -> Guards:
        max_connections = max(16, (open_files - FD_RESERVE) // 2)
        per_client = settings.connections_per_client or max(8, max_connections // 4)
        return cls(
            max_connections=max_connections,
            per_client=min(per_client, max_connections),
            header_timeout=settings.header_timeout,
            body_min_rate=settings.body_min_rate,
            body_rate_window=settings.body_rate_window,
        )


class FrontConnection(Protocol):
    def close_idle(self) -> None:
        """Take no further request; close at once when none is being answered."""

    async def shutdown(self, timeout: float | None) -> None:
        """Close once the request being answered is (within `timeout`, then cancelled)."""


class Front(Protocol):
    """Makes the protocol a new connection starts with (`herder.proxy.front`),
    while `ready`; it calls back the server's `opened`, `head_received`,
    `hand_over` and `closed`."""

    @property
    def ready(self) -> bool: ...

    def connection(self, door: GuardedServer) -> FrontConnection: ...


@dataclass(eq=False)
class _Connection:
    peer: str
    header_timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Body:
    handler: web_protocol.RequestHandler
    window_start: float
    bytes_at_start: int


class GuardedServer(web.Server):
    """aiohttp's low-level server with the guards of this module: the server
    aiohttp's `Application` makes, given this class and `install`ed guards
    (`GuardedRunner`), since the application builds its server itself."""

    guards: Guards
    keepalive_timeout: float = KEEPALIVE_TIMEOUT

    def install(self, guards: Guards, front: Front | None = None) -> None:
        self.guards = guards
        self.front = front
        # Keyed by aiohttp's request handler, or the front's connection.
        self._guarded: dict[object, _Connection] = {}
        self._fronts: set[FrontConnection] = set()
        self._handing: dict[asyncio.Transport, _Connection] = {}
        self._per_peer: dict[str, int] = {}
        self._bodies: dict[streams.StreamReader, _Body] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._inner_factory = self.request_factory
        self.request_factory = self._make_guarded_request

    def __call__(self) -> Any:
        """The protocol of a new connection: the front's while it is ready."""
        front = self.front
        if front is not None and front.ready:
            return front.connection(self)
        return super().__call__()

    def connection_made(
        self, handler: web_protocol.RequestHandler, transport: asyncio.Transport
    ) -> None:
        super().connection_made(handler, transport)
        handed = self._handing.pop(transport, None)
        if handed is not None:  # from the front: counted, timed already
            self._guarded[handler] = handed
            return
        refused = self._admit(handler, transport)
        if refused is not None:
            self._refuse(handler, transport, refused)

    def _admit(self, key: object, transport: asyncio.Transport) -> str | None:
        """Count a new connection in (and time its head), or say why not."""
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) and peername else "?"
        count = self._per_peer.get(peer, 0)
        if len(self._guarded) >= self.guards.max_connections:
            return "the herder has too many open connections"
        if count >= self.guards.per_client:
            return "too many open connections from your address"
        connection = _Connection(peer)
        connection.header_timer = self._loop.call_later(
            self.guards.header_timeout, self._header_timed_out, connection, transport
        )
        self._guarded[key] = connection
        self._per_peer[peer] = count + 1
        self._ensure_sweeper()
        return None

    def connection_lost(
        self, handler: web_protocol.RequestHandler, exc: BaseException | None = None
    ) -> None:
        super().connection_lost(handler, exc)
        self._forget(handler)

    # -- the front door's calls (`Front`) -------------------------------------------------

    def opened(self, connection: FrontConnection, transport: asyncio.Transport) -> bool:
        refused = self._admit(connection, transport)
        if refused is None:
            self._fronts.add(connection)
            return True
        transport.pause_reading()
        with contextlib.suppress(Exception):
            transport.write(_answer(_REFUSED, refused))
        transport.close()
        return False

    def head_received(self, connection: FrontConnection) -> None:
        guarded = self._guarded.get(connection)
        if guarded is not None and guarded.header_timer is not None:
            guarded.header_timer.cancel()
            guarded.header_timer = None

    def closed(self, connection: FrontConnection) -> None:
        self._fronts.discard(connection)
        self._forget(connection)

    def hand_over(
        self, connection: FrontConnection, transport: asyncio.Transport, data: bytes
    ) -> None:
        """aiohttp's request handler takes over the connection (counted and
        timed on as it was), `data` its first bytes."""
        self._fronts.discard(connection)
        guarded = self._guarded.pop(connection, None)
        if guarded is not None:
            self._handing[transport] = guarded
        handler = super().__call__()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if data:
            handler.data_received(data)

    def _forget(self, key: object) -> None:
        connection = self._guarded.pop(key, None)
        if connection is None:
            return
        if connection.header_timer is not None:
            connection.header_timer.cancel()
        left = self._per_peer[connection.peer] - 1
        if left:
            self._per_peer[connection.peer] = left
        else:
            del self._per_peer[connection.peer]

    def _refuse(
        self, handler: web_protocol.RequestHandler, transport: asyncio.Transport, error: str
    ) -> None:
        transport.pause_reading()
        with contextlib.suppress(Exception):
            transport.write(_answer(_REFUSED, error))
        # Closed once the handler's task has started (it is created after this
        # hook returns, and must not find its connection already lost).
        self._loop.call_soon(self._loop.call_soon, _close, handler)

    def _header_timed_out(self, connection: _Connection, transport: asyncio.Transport) -> None:
        if connection.header_timer is None:
            return
        connection.header_timer = None
        with contextlib.suppress(Exception):
            transport.write(_answer(_TIMED_OUT, "request head not received in time"))
        transport.close()

    def _make_guarded_request(
        self,
        message: Any,
        payload: streams.StreamReader,
        protocol: web_protocol.RequestHandler,
        writer: Any,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        connection = self._guarded.get(protocol)
        if connection is not None and connection.header_timer is not None:
            connection.header_timer.cancel()
            connection.header_timer = None
        if payload is not streams.EMPTY_PAYLOAD and not payload.is_eof():
            self._bodies[payload] = _Body(protocol, self._loop.time(), payload.total_bytes)
        return self._inner_factory(message, payload, protocol, writer, task)

    # -- the body deadline -----------------------------------------------------------

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(SWEEP_EVERY, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = self._loop.time()
        window = self.guards.body_rate_window
        for payload, body in list(self._bodies.items()):
            if (
                payload.is_eof()
                or payload.exception() is not None
                or body.handler.transport is None
            ):
                del self._bodies[payload]
                continue
            if now - body.window_start < window:
                continue
            received = payload.total_bytes - body.bytes_at_start
            buffered = getattr(payload, "_size", 0)
            if buffered == 0 and received < self.guards.body_min_rate * window:
                del self._bodies[payload]
                log.info(
                    "request body cut: %d bytes in %.0f s (below %d bytes a second)",
                    received,
                    now - body.window_start,
                    self.guards.body_min_rate,
                )
                body.handler.keep_alive(False)
                payload.set_exception(RequestTimeout())
                # The handler answers 408; a handler that is not reading any
                # more is not waited for.
                self._loop.call_later(1.0, _close, body.handler)
                continue
            body.window_start, body.bytes_at_start = now, payload.total_bytes
        if self._guarded or self._bodies:
            self._ensure_sweeper()

    def pre_shutdown(self) -> None:
        super().pre_shutdown()
        for front in list(self._fronts):
            front.close_idle()

    async def shutdown(self, timeout: float | None = None) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in self._guarded.values():
            if connection.header_timer is not None:
                connection.header_timer.cancel()
        await asyncio.gather(*(front.shutdown(timeout) for front in list(self._fronts)))
        await super().shutdown(timeout)


def _close(handler: web_protocol.RequestHandler) -> None:
    if handler.transport is not None:
        handler.force_close()


class GuardedRunner(web.AppRunner):
    """`web.AppRunner` whose server is a `GuardedServer`."""

    def __init__(
        self, app: web.Application, guards: Guards, front: Front | None = None, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self.guards = guards
        self.front = front

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = GuardedServer  # adds methods only, no new layout
        assert isinstance(server, GuardedServer)
        server.install(self.guards, self.front)
        return server


def run(
    app: web.Application,
    settings: Settings,
    guards: Guards,
    loop: asyncio.AbstractEventLoop,
    on_ready: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    front: Front | None = None,
) -> None:
    """Serve `app` on `loop` until SIGINT or SIGTERM (as `web.run_app`, with
    the guards and the `front` door); the loop is closed at the end."""

    async def serve() -> None:
        runner = GuardedRunner(
            app,
            guards,
            front,
            access_log=None,
            handle_signals=True,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.host, settings.port)
            await site.start()
            on_ready(f"======== Running on http://{settings.host}:{settings.port} ========")
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.set_event_loop(loop)
    main = loop.create_task(serve())
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        _cancel(loop, {main})
        _cancel(loop, asyncio.all_tasks(loop))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)
    if main.done() and not main.cancelled() and main.exception() is not None:
        raise main.exception()  # type: ignore[misc]


def _cancel(loop: asyncio.AbstractEventLoop, tasks: set[asyncio.Task[Any]]) -> None:
    tasks = {t for t in tasks if not t.done()}
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
