"""Relaying one request to a daemon and its answer back (see `herder.proxy`).

The header rules (hop-by-hop, credentials, `X-Forwarded-*`, `Location`),
then one of three paths: the lean client for plain GETs and HEADs, the
aiohttp session for everything with a body, and WebSockets frame by frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote_plus

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..errors import HerderError, NotFound, UpstreamError, UpstreamTimeout
from ..ledger.lookup import RunningDaemon
from ..metrics import Metrics
from .lean import UpstreamBroken, UpstreamUnreachable
from .origins import SANDBOX, scope_cookie
from .upstreams import Upstreams

log = logging.getLogger("herder.proxy")

PREFIX = "/daemon/v1/proxy"
CHUNK = 1 << 16
WS_MAX_MESSAGE = 16 << 20
# RFC 9110 7.6.1, plus the legacy names proxies still see.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded: the caller's credentials for the herder, and what the
# proxy sets itself.
DROPPED_REQUEST_HEADERS = frozenset(
    {
        "host",
        "authorization",
        "cookie",
        "expect",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-prefix",
        # What a client says of itself: the herder sets what it saw instead.
        "forwarded",
        "x-real-ip",
    }
)
# One set lookup per header on the hot path.
_NOT_FORWARDED = HOP_BY_HOP | DROPPED_REQUEST_HEADERS
# aiohttp's server decompresses request bodies in these codings.
DECOMPRESSED_CODINGS = frozenset({"gzip", "deflate", "br", "zstd"})
_BODY_CODING_HEADERS = frozenset({"content-encoding", "content-length"})
WEBSOCKET_HANDSHAKE_HEADERS = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)


async def forward(
    request: web.Request,
    daemon: RunningDaemon,
    prefix: str,
    upstreams: Upstreams,
    metrics: Metrics,
) -> web.StreamResponse:
    """Relay one request (or WebSocket) to the daemon and its answer back;
    body bytes and WebSockets are counted in `metrics`."""
    if daemon.first_port is None:
        raise NotFound(f"daemon {daemon.container_name!r} publishes no port")
    if not daemon.address:
        raise UpstreamError(f"daemon {daemon.container_name!r} has no address")
    path = _stripped_path(request) if prefix else request.rel_url.raw_path
    if path is None:
        if request.method in ("GET", "HEAD"):
            query = request.rel_url.raw_query_string
            raise web.HTTPPermanentRedirect(prefix + "/" + (f"?{query}" if query else ""))
        path = "/"
    query = _query_without_token(request)
    websocket = _is_websocket_upgrade(request)
    headers = _upstream_headers(request, prefix, websocket)
    if not websocket and request.method in LEAN_METHODS and not request.body_exists:
        head = request_head(request.method, daemon.address, daemon.first_port, path, query, headers)
        if head is not None:
            return await _relay_lean(request, upstreams, metrics, head, daemon, prefix)
    target = URL.build(
        scheme="http",
        host=daemon.address,
        port=daemon.first_port,
        path=path,
        query_string=query,
        encoded=True,
    )
    if websocket:
        return await _relay_websocket(request, upstreams, metrics, target, headers)
    return await _relay_http(request, upstreams, metrics, target, headers, daemon, prefix)


def _stripped_path(request: web.Request) -> str | None:
    """The raw path after `/daemon/v1/proxy/<name>` (None when nothing follows)."""
    raw = request.rel_url.raw_path
    cut = raw.find("/", len(PREFIX) + 1)
    return None if cut < 0 else raw[cut:]


def _query_without_token(request: web.Request) -> str:
    """The raw query minus its `token` parameters; every other byte as sent
    (decoding and encoding again would turn `%ff` into `%EF%BF%BD`)."""
    raw = request.rel_url.raw_query_string
    if not raw or "token" not in request.query:
        return raw
    return strip_token(raw)


def strip_token(raw: str) -> str:
    """A raw query string minus the parameters named `token` (however encoded)."""
    return "&".join(
        part for part in raw.split("&") if unquote_plus(part.partition("=")[0]) != "token"
    )


Headers = CIMultiDictProxy[str] | CIMultiDict[str]


def _connection_named(headers: Headers) -> frozenset[str]:
    """The header names a `Connection` header lists (hop-by-hop for this hop)."""
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()
    return frozenset(token.strip().lower() for value in values for token in value.split(","))


def _decompressed(headers: Headers) -> bool:
    """Whether aiohttp's server decompressed the request body as it read it
    (it does for these codings, as its parser checks them)."""
    coding = headers.get("Content-Encoding", "")
    return coding.isascii() and coding.lower() in DECOMPRESSED_CODINGS


def _upstream_headers(request: web.Request, prefix: str, websocket: bool) -> CIMultiDict[str]:
    return upstream_headers(
        request.headers, request.remote or "", request.scheme, request.host, prefix, websocket
    )


def upstream_headers(
    incoming: Headers, remote: str, scheme: str, host: str, prefix: str, websocket: bool
) -> CIMultiDict[str]:
    """The headers a request from `remote` (for `host`, over `scheme`) goes on with."""
    named = _connection_named(incoming)
    # A decompressed body goes on plain, chunked: its coding and length are gone.
    dropped = _BODY_CODING_HEADERS if _decompressed(incoming) else frozenset()
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in incoming.items():
        lower = key.lower()
        if lower in _NOT_FORWARDED or lower in named or lower in dropped:
            continue
        if websocket and lower in WEBSOCKET_HANDSHAKE_HEADERS:
            continue
        out.add(key, value)
    earlier = incoming.get("X-Forwarded-For")
    out["X-Forwarded-For"] = f"{earlier}, {remote}" if earlier else remote
    out["X-Forwarded-Proto"] = scheme
    out["X-Forwarded-Host"] = host
    if prefix:
        out["X-Forwarded-Prefix"] = prefix
    out["X-Real-IP"] = remote
    return out


def copy_downstream_headers(
    incoming: Headers,
    daemon: RunningDaemon,
    prefix: str,
    out: CIMultiDict[str],
    *,
    length: bool,
) -> None:
    """The daemon's response headers into `out`, minus hop-by-hop ones (and
    `Content-Length` unless `length`), with `Location` rewritten, cookies
    kept to the daemon and, on the path route (`prefix`), the sandbox policy
    (`herder.proxy.origins`)."""
    named = _connection_named(incoming)
    for key, value in incoming.items():
        lower = key.lower()
        if lower in HOP_BY_HOP or lower in named:
            continue
        if lower == "location":
            value = rewrite_location(value, daemon, prefix)
        elif lower == "set-cookie":
            value = scope_cookie(value, prefix)
        elif lower == "content-length" and not length:
            continue
        out.add(key, value)
    if prefix:
        out.add("Content-Security-Policy", SANDBOX)


def rewrite_location(value: str, daemon: RunningDaemon, prefix: str) -> str:
    """Put a redirect into the daemon back under the proxy prefix.

    `/x` and `http://<daemon address>:<port>/x` become `<prefix>/x`; relative
    references already resolve under the prefix and other hosts are left alone.
    """
    if value.startswith("/") and not value.startswith("//"):
        return prefix + value
    try:
        url = URL(value)
    except ValueError:
        return value
    if not url.is_absolute() or url.scheme not in ("http", "https"):
        return value
    if url.host != daemon.address or url.port != daemon.first_port:
        return value
    rest = url.raw_path or "/"
    if url.raw_query_string:
        rest += "?" + url.raw_query_string
    if url.raw_fragment:
        rest += "#" + url.raw_fragment
    return prefix + rest


def _is_websocket_upgrade(request: web.Request) -> bool:
    return (
        request.method == "GET"
        and request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in request.headers.get("Connection", "").lower()
    )


def upstream_failure(exc: BaseException, host: str | None) -> HerderError:
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("the daemon did not answer in time")
    log.info("upstream %s failed: %r", host, exc)
    return UpstreamError("the daemon is not answering")


# -- HTTP ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Failures:
    """What each client raises, for the shared tail (`_answer`)."""

    reading: tuple[type[BaseException], ...]  # a small body read whole: a 502 or 504
    broken: tuple[type[BaseException], ...]  # mid-body: the caller's connection is cut
    gone: tuple[type[BaseException], ...]  # the caller went away


_AIOHTTP_FAILURES = _Failures(
    reading=(TimeoutError, aiohttp.ClientError),
    broken=(TimeoutError, aiohttp.ClientError),
    gone=(ConnectionResetError, aiohttp.ClientConnectionResetError),
)
LEAN_FAILURES = _Failures(
    reading=(TimeoutError, UpstreamBroken, OSError),
    broken=(TimeoutError, UpstreamBroken),
    gone=(ConnectionResetError,),
)


async def _relay_http(
    request: web.Request,
    upstreams: Upstreams,
    metrics: Metrics,
    target: URL,
    headers: CIMultiDict[str],
    daemon: RunningDaemon,
    prefix: str,
) -> web.StreamResponse:
    counted = _Counted()
    try:
        body = counted.upload(request.content.iter_chunked(CHUNK)) if request.body_exists else None
        try:
            upstream = await upstreams.session.request(
                request.method,
                target,
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=upstreams.timeout,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError):
                upstreams.forget(daemon.container_name)
            raise upstream_failure(exc, target.host) from None
        async with upstream:
            return await _answer(
                request,
                daemon,
                prefix,
                counted,
                status=upstream.status,
                reason=upstream.reason,
                headers=upstream.headers,
                length=upstream.content_length,
                read_all=upstream.read,
                chunks=lambda: upstream.content.iter_chunked(CHUNK),
                failures=_AIOHTTP_FAILURES,
            )
    finally:
        metrics.proxied(counted.sent, counted.returned)


class _Counted:
    """Body bytes of one proxied request: `sent` to the daemon, `returned` from it."""

    __slots__ = ("returned", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.returned = 0

    async def upload(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self.sent += len(chunk)
            yield chunk


async def _answer(
    request: web.Request,
    daemon: RunningDaemon,
    prefix: str,
    counted: _Counted,
    *,
    status: int,
    reason: str | None,
    headers: Headers,
    length: int | None,
    read_all: Callable[[], Awaitable[bytes]],
    chunks: Callable[[], AsyncIterator[bytes]],
    failures: _Failures,
) -> web.StreamResponse:
    """The daemon's answer to the caller, the same for both clients.

    A small body of known size is read whole, and headers and body go out
    in one write; any other is streamed. A daemon that breaks off mid-body
    has the caller's connection ended without a clean end, so a cut body
    is never taken as whole.
    """
    if length is not None and length <= CHUNK and request.method != "HEAD":
        try:
            content = await read_all()
        except failures.reading as exc:
            raise upstream_failure(exc, daemon.address) from None
        counted.returned = len(content)
        small = web.Response(body=content, status=status, reason=reason)
        copy_downstream_headers(headers, daemon, prefix, small.headers, length=False)
        return small
    response = web.StreamResponse(status=status, reason=reason)
    copy_downstream_headers(headers, daemon, prefix, response.headers, length=True)
    try:
        await response.prepare(request)
        async for chunk in chunks():
            counted.returned += len(chunk)
            await response.write(chunk)
        await response.write_eof()
    except failures.gone:
        pass  # the caller went away; closing the upstream drops the daemon's side
    except failures.broken as exc:
        log.info("upstream %s broke off: %r", daemon.address, exc)
        if request.transport is not None:
            request.transport.close()
    return response


# -- HTTP, the lean way: plain GET and HEAD -------------------------------------------

LEAN_METHODS = frozenset({"GET", "HEAD"})


def request_head(
    method: str, host: str, port: int, path: str, query: str, headers: CIMultiDict[str]
) -> bytes | None:
    """The request head as aiohttp's client would write it (None when a
    header value could break the head: aiohttp then refuses it as before)."""
    authority = f"[{host}]" if ":" in host else host
    if port != 80:
        authority = f"{authority}:{port}"
    target = f"{path}?{query}" if query else path
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n"]
    for key, value in headers.items():
        if "\n" in value or "\r" in value:
            return None
        lines.append(f"{key}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


async def _relay_lean(
    request: web.Request,
    upstreams: Upstreams,
    metrics: Metrics,
    head: bytes,
    daemon: RunningDaemon,
    prefix: str,
) -> web.StreamResponse:
    """`_relay_http` for a request without a body, over the lean client."""
    assert daemon.first_port is not None
    counted = _Counted()
    try:
        try:
            upstream = await upstreams.pool.request(
                daemon.address,
                daemon.first_port,
                head,
                head_request=request.method == "HEAD",
                connect_timeout=upstreams.connect_timeout,
                read_timeout=upstreams.read_timeout,
            )
        except (TimeoutError, UpstreamBroken, OSError) as exc:
            if isinstance(exc, UpstreamUnreachable):
                upstreams.forget(daemon.container_name)
            raise upstream_failure(exc, daemon.address) from None
        try:
            return await _answer(
                request,
                daemon,
                prefix,
                counted,
                status=upstream.status,
                reason=upstream.reason,
                headers=upstream.headers,
                length=upstream.content_length,
                read_all=upstream.body.read_all,
                chunks=lambda: upstream.body.chunks(CHUNK),
                failures=LEAN_FAILURES,
            )
        finally:
            upstream.close()
    finally:
        metrics.proxied(0, counted.returned)


# -- WebSocket ------------------------------------------------------------------------------

# Close codes an endpoint may send (RFC 6455 7.4): others become 1000.
_SENDABLE_CLOSE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013})


def _close_code(code: object) -> int:
    if isinstance(code, int) and (code in _SENDABLE_CLOSE or 3000 <= code <= 4999):
        return code
    return 1000


async def _relay_websocket(
    request: web.Request,
    upstreams: Upstreams,
    metrics: Metrics,
    target: URL,
    headers: CIMultiDict[str],
) -> web.StreamResponse:
    protocols = [
        p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
    ]
    try:
        upstream = await upstreams.session.ws_connect(
            target,
            headers=headers,
            protocols=protocols,
            autoclose=False,
            autoping=True,
            max_msg_size=WS_MAX_MESSAGE,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
            receive_timeout=None,
            compress=0,
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise UpstreamError(f"the daemon refused the WebSocket upgrade ({exc.status})") from None
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise upstream_failure(exc, target.host) from None
    client = web.WebSocketResponse(
        protocols=[upstream.protocol] if upstream.protocol else (),
        autoclose=False,
        autoping=True,
        max_msg_size=WS_MAX_MESSAGE,
    )
    try:
        await client.prepare(request)
        with metrics.websocket("proxy"):
            await _pump_both_ways(client, upstream)
    finally:
        if not upstream.closed:
            await upstream.close()
        if not client.closed:
            await client.close()
    return client


WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump_both_ways(client: web.WebSocketResponse, upstream: WebSocket) -> None:
    to_daemon = asyncio.create_task(_pump(client, upstream))
    to_client = asyncio.create_task(_pump(upstream, client))
    try:
        await asyncio.wait({to_daemon, to_client}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (to_daemon, to_client):
            task.cancel()
        for task in (to_daemon, to_client):
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, aiohttp.ClientError):
                await task


async def _pump(source: WebSocket, sink: WebSocket) -> None:
    """Copy frames from `source` to `sink` until either closes; a close passes
    its code and reason on."""
    while True:
        msg = await source.receive()
        if msg.type == WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type == WSMsgType.CLOSE:
            code = _close_code(msg.data)
            reason = (msg.extra or "").encode()[:123]
            await sink.close(code=code, message=reason)
            await source.close(code=code)
            return
        else:  # CLOSING, CLOSED, ERROR: the source is gone without a close frame
            await sink.close(code=1011 if msg.type == WSMsgType.ERROR else 1001)
            return
