"""A lean HTTP/1.1 client for the proxy's plain requests (GET and HEAD
without a body), with its own keep-alive pool.

aiohttp's client session costs the proxy about as much CPU per small
request as everything else together; this client writes the request head
in one call and reads the answer with the stream reader, and nothing more.
It speaks just what a proxied GET or HEAD needs: any response framing
(`Content-Length`, chunked, until close, none for HEAD/1xx/204/304) is
decoded, the body is read whole when it is small and of known length and
streamed otherwise. Everything else (bodies, WebSocket upgrades) goes
through aiohttp.

Errors: `UpstreamUnreachable` when no connection could be made,
`TimeoutError` when connecting or a read took longer than allowed,
`UpstreamBroken` for anything else the daemon got wrong (malformed answer,
connection lost mid-way).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol, TypeVar

from multidict import CIMultiDict

# A response head larger than this is refused (aiohttp allows 8 KiB lines).
HEAD_LIMIT = 1 << 16
# Idle connections are kept this long, and at most this many per daemon.
KEEPALIVE = 30.0
MAX_IDLE = 256
NO_BODY_STATUSES = frozenset({204, 304})
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
MAX_LENGTH_DIGITS = 18  # a Content-Length beyond any body; int() refuses 4300 digits


R = TypeVar("R", bound="_Reusable")


class UpstreamUnreachable(OSError):
    """No connection to the daemon could be made."""


class UpstreamBroken(Exception):
    """The daemon answered with something that is not HTTP, or broke off.

    `nothing_read`: the connection closed before a byte of the answer came
    (a kept-alive connection the daemon had closed)."""

    def __init__(self, message: str, *, nothing_read: bool = False) -> None:
        super().__init__(message)
        self.nothing_read = nothing_read


class _Connection:
    __slots__ = ("idle_since", "key", "reader", "writer")

    def __init__(
        self, key: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.key = key
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float) -> bool:
        return (
            now - self.idle_since < KEEPALIVE
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    def close(self) -> None:
        self.writer.close()


class UpstreamPool:
    """Keep-alive connections to daemons, by (host, port)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._swept = time.monotonic()
        self._closed = False

    async def request(
        self,
        host: str,
        port: int,
        head: bytes,
        *,
        head_request: bool,
        connect_timeout: float,
        read_timeout: float,
    ) -> UpstreamResponse:
        """Send `head` (a complete request without body) and read the answer's head.

        A kept-alive connection the daemon closed meanwhile is retried once
        on a new connection (the methods sent here are idempotent)."""
        key = (host, port)
        conn = self._acquire(key)
        if conn is not None:
            try:
                return await self._exchange(conn, head, head_request, read_timeout)
            except ConnectionError:
                pass  # closed by the daemon while idle: once more on a new connection
            except UpstreamBroken as exc:
                if not exc.nothing_read:
                    raise
        conn = await self._connect(key, connect_timeout)
        try:
            return await self._exchange(conn, head, head_request, read_timeout)
        except ConnectionError as exc:
            raise UpstreamBroken(f"connection lost: {exc!r}") from None

    async def _exchange(
        self, conn: _Connection, head: bytes, head_request: bool, read_timeout: float
    ) -> UpstreamResponse:
        try:
            conn.writer.write(head)
            async with asyncio.timeout(read_timeout):
                while True:
                    try:
                        raw = await conn.reader.readuntil(b"\r\n\r\n")
                    except asyncio.IncompleteReadError as exc:
                        raise UpstreamBroken(
                            "the daemon closed the connection", nothing_read=not exc.partial
                        ) from None
                    except asyncio.LimitOverrunError:
                        raise UpstreamBroken("response head too large") from None
                    version, status, reason, headers = parse_head(raw)
                    if status >= 200:
                        return _response(
                            self, conn, version, status, reason, headers, head_request, read_timeout
                        )
                    if status == 101:
                        raise UpstreamBroken("unexpected protocol switch")
                    # 1xx informational: the final answer follows.
        except BaseException:
            conn.close()
            raise

    def adopt(
        self,
        key: tuple[str, int],
        transport: asyncio.Transport,
        buffered: bytes,
        version: str,
        status: int,
        reason: str,
        headers: CIMultiDict[str],
        head_request: bool,
        read_timeout: float,
    ) -> UpstreamResponse:
        """The response whose head another protocol read off `transport`
        (`buffered`: what it read past the head), its body read here; the
        connection joins this pool's afterwards."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=HEAD_LIMIT, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if buffered:
            reader.feed_data(buffered)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        conn = _Connection(key, reader, writer)
        return _response(self, conn, version, status, reason, headers, head_request, read_timeout)

    def _acquire(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable(now):
                return conn
            conn.close()
        return None

    async def _connect(self, key: tuple[str, int], connect_timeout: float) -> _Connection:
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(key[0], key[1], limit=HEAD_LIMIT)
        except TimeoutError:
            raise
        except OSError as exc:
            raise UpstreamUnreachable(exc.errno, f"cannot connect to {key[0]}:{key[1]}") from exc
        return _Connection(key, reader, writer)

    def release(self, conn: _Connection) -> None:
        """A connection whose exchange ended cleanly goes back to the pool."""
        # Bytes already waiting would be taken for the next answer's head:
        # a daemon that sent more than its body gets a new connection.
        if self._closed or conn.writer.is_closing() or getattr(conn.reader, "_buffer", None):
            conn.close()
            return
        now = time.monotonic()
        conn.idle_since = now
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE:
            conn.close()
        else:
            idle.append(conn)
        if now - self._swept > KEEPALIVE:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Close idle connections past their keep-alive (of daemons not asked since)."""
        self._swept = now
        sweep_idle(self._idle, now)

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_BUT_CRLF = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.1 field names


class _Reusable(Protocol):
    def usable(self, now: float) -> bool: ...
    def close(self) -> None: ...


def sweep_idle(idle: dict[Any, list[R]], now: float) -> None:
    """Close the idle upstream connections of `idle` (by key) that are past
    their keep-alive, and forget keys left with none (both pools use it)."""
    for key in list(idle):
        keep = []
        for conn in idle[key]:
            if conn.usable(now):
                keep.append(conn)
            else:
                conn.close()
        if keep:
            idle[key] = keep
        else:
            del idle[key]


def parse_head(raw: bytes) -> tuple[str, int, str, CIMultiDict[str]]:
    """Status line and headers of a response head (ending in CRLF CRLF)."""
    text = raw[:-4].decode("utf-8", "surrogateescape")
    # A bare CR or LF, NUL or another control character (tabs aside) is
    # refused, as llhttp refuses it: passed on, it would split a header.
    crlf = text.count("\r\n")
    if _CONTROL_BUT_CRLF.search(text) or text.count("\r") != crlf or text.count("\n") != crlf:
        for line in text.split("\r\n"):
            if _CONTROL.search(line):
                raise UpstreamBroken(f"control character in the response head: {line[:80]!r}")
    lines = text.split("\r\n")
    status_line = lines[0]
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if (
        version not in ("HTTP/1.1", "HTTP/1.0")
        or len(code) != 3
        or not (code.isascii() and code.isdigit())
    ):
        raise UpstreamBroken(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise UpstreamBroken(f"malformed header line: {line[:80]!r}")
        headers.add(name, value.strip(" \t"))
    return version, int(code), reason, headers


def _response(
    pool: UpstreamPool,
    conn: _Connection,
    version: str,
    status: int,
    reason: str,
    headers: CIMultiDict[str],
    head_request: bool,
    read_timeout: float,
) -> UpstreamResponse:
    """The final response, its body framed as RFC 9112 6.3 says."""
    keep_alive, length, framing, remaining = framing_of(version, status, headers, head_request)
    return UpstreamResponse(
        status,
        reason,
        headers,
        length,
        _Body(pool, conn, framing, remaining, keep_alive, read_timeout),
    )


def framing_of(
    version: str, status: int, headers: CIMultiDict[str], head_request: bool
) -> tuple[bool, int | None, str, int]:
    """How a response's body is framed (RFC 9112 6.3): whether the connection
    stays alive after it, its `Content-Length`, the framing ("length",
    "chunked" or "close") and the bytes to read (-1: until the framing says)."""
    keep_alive = _keep_alive(version, headers)
    length: int | None = None
    framing = "length"
    if head_request or status in NO_BODY_STATUSES:
        remaining = 0
        if "Content-Length" in headers and "Transfer-Encoding" not in headers:
            length = _content_length(headers)
    elif "Transfer-Encoding" in headers:
        codings = ",".join(headers.getall("Transfer-Encoding")).lower().split(",")
        framing = "chunked" if codings[-1].strip() == "chunked" else "close"
        remaining = -1
    elif "Content-Length" in headers:
        length = remaining = _content_length(headers)
    else:
        framing, remaining = "close", -1
    if framing == "close":
        keep_alive = False
    return keep_alive, length, framing, remaining


def _keep_alive(version: str, headers: CIMultiDict[str]) -> bool:
    if "Connection" not in headers:
        return version == "HTTP/1.1"
    tokens = {
        t.strip().lower() for value in headers.getall("Connection", ()) for t in value.split(",")
    }
    if "close" in tokens:
        return False
    return version == "HTTP/1.1" or "keep-alive" in tokens


def _content_length(headers: CIMultiDict[str]) -> int:
    given = headers.getall("Content-Length")
    if len(given) == 1 and given[0].isdigit() and given[0].isascii():  # the usual one
        if len(given[0]) <= MAX_LENGTH_DIGITS:
            return int(given[0])
    values = {v.strip() for value in headers.getall("Content-Length") for v in value.split(",")}
    if len(values) != 1:
        raise UpstreamBroken("conflicting Content-Length")
    value = values.pop()
    if not value.isdigit() or not value.isascii() or len(value) > MAX_LENGTH_DIGITS:
        raise UpstreamBroken(f"bad Content-Length {value[:20]!r}")
    return int(value)


class _Body:
    """Reads one response body off its connection; gives the connection
    back to the pool when the body was read to its end, closes it otherwise."""

    __slots__ = ("conn", "done", "framing", "keep_alive", "pool", "read_timeout", "remaining")

    def __init__(
        self,
        pool: UpstreamPool,
        conn: _Connection,
        framing: str,
        remaining: int,
        keep_alive: bool,
        read_timeout: float,
    ) -> None:
        self.pool = pool
        self.conn = conn
        self.framing = framing  # "length", "chunked" or "close"
        self.remaining = remaining
        self.keep_alive = keep_alive
        self.read_timeout = read_timeout
        self.done = False
        if framing == "length" and remaining == 0:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        if self.keep_alive:
            self.pool.release(self.conn)
        else:
            self.conn.close()

    def close(self) -> None:
        if not self.done:
            self.done = True
            self.conn.close()

    async def read_all(self) -> bytes:
        """The whole body of known length (the caller checked it is small)."""
        if self.done:
            return b""
        reader = self.conn.reader
        try:
            if len(getattr(reader, "_buffer", b"")) >= self.remaining:
                data = await reader.readexactly(self.remaining)  # here already: no timer
            else:
                async with asyncio.timeout(self.read_timeout):
                    data = await reader.readexactly(self.remaining)
        except (asyncio.IncompleteReadError, OSError) as exc:
            self.close()
            raise UpstreamBroken(f"the daemon broke off the body: {exc!r}") from None
        except BaseException:
            self.close()
            raise
        self._finish()
        return data

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        """The body in pieces of at most `size` bytes, as they arrive."""
        try:
            async for piece in self._pieces(size):
                yield piece
        except OSError as exc:  # reset by the daemon: not the caller's doing
            raise UpstreamBroken(f"the daemon broke off the body: {exc!r}") from None
        finally:
            self.close()

    async def _pieces(self, size: int) -> AsyncIterator[bytes]:
        if self.framing == "chunked":
            async for piece in self._chunked(size):
                yield piece
            return
        while not self.done:
            want = size if self.remaining < 0 else min(size, self.remaining)
            async with asyncio.timeout(self.read_timeout):
                piece = await self.conn.reader.read(want)
            if not piece:
                if self.remaining < 0:  # read until close: this is the end
                    self.close()
                    return
                raise UpstreamBroken("the daemon broke off the body")
            if self.remaining > 0:
                self.remaining -= len(piece)
                if self.remaining == 0:
                    self._finish()
            yield piece

    async def _chunked(self, size: int) -> AsyncIterator[bytes]:
        reader = self.conn.reader
        while True:
            line = await self._line()
            token = line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(token):
                raise UpstreamBroken("malformed chunk size")
            left = int(token, 16)
            if left == 0:
                while await self._line():  # trailers, dropped
                    pass
                self._finish()
                return
            while left:
                async with asyncio.timeout(self.read_timeout):
                    piece = await reader.read(min(size, left))
                if not piece:
                    raise UpstreamBroken("the daemon broke off the body")
                left -= len(piece)
                yield piece
            if await self._line():
                raise UpstreamBroken("chunk data longer than announced")

    async def _line(self) -> bytes:
        try:
            async with asyncio.timeout(self.read_timeout):
                line = await self.conn.reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError:
            raise UpstreamBroken("the daemon broke off the body") from None
        except asyncio.LimitOverrunError:
            raise UpstreamBroken("chunk line too long") from None
        return line[:-2]


class UpstreamResponse:
    """The head of a daemon's answer, and its body (`read_all` or `chunks`;
    `close` when done either way)."""

    __slots__ = ("body", "content_length", "headers", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: CIMultiDict[str],
        content_length: int | None,
        body: _Body,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = content_length
        self.body = body

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.body.close()
