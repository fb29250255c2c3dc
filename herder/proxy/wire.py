"""The front door's heads (`herder.proxy.front`): the strict parser of the
requests it answers itself, and the heads of its answers, made as aiohttp's
response objects make them (the same headers, in the cases the route has).
"""

from __future__ import annotations

import http
import json
import re
from dataclasses import dataclass

from aiohttp.helpers import must_be_empty_body, rfc822_formatted_time, should_remove_content_length
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict
from yarl import URL

from ..requestlog import loggable
from ..requestlog import request_id as make_request_id
from .forward import PREFIX, strip_token
from .origins import daemon_on_host

# A longer head goes to aiohttp, which judges it (8190 is its line limit).
HEAD_LIMIT = 8190
MAX_HEADERS = 128  # aiohttp's server refuses more (its `max_headers`)
# Headers aiohttp's parser refuses twice (`http_parser.SINGLETON_HEADERS`).
_SINGLETONS = frozenset(
    {
        "content-length",
        "content-location",
        "content-range",
        "content-type",
        "etag",
        "host",
        "max-forwards",
        "server",
        "transfer-encoding",
        "user-agent",
    }
)
# What only aiohttp handles: bodies, upgrades, `100-continue`.
_NOT_HERE = frozenset({"content-length", "transfer-encoding", "upgrade", "expect"})
_PCHARS = r"A-Za-z0-9\-._~!$&'()*+,;=:@/%"
_REQUEST_LINE = re.compile(rf"(GET|HEAD) (/[{_PCHARS}]*)(?:\?([{_PCHARS}?]*))? HTTP/1\.1")
# The whole head: a first line, header lines of a token, a colon and
# printable ASCII or tabs, the blank line. Anything else goes to aiohttp.
_HEAD = re.compile(r"[^\r\n]+\r\n(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t -~]*\r\n)*\r\n")
_NO_TOKENS: frozenset[str] = frozenset()


@dataclass(slots=True)
class FrontRequest:
    """A request the front door answers."""

    raw: bytes  # its head as received (aiohttp's, should it go over)
    method: str
    path: str  # the raw path as sent, and the daemon's part of it
    upstream_path: str
    query: str
    headers: CIMultiDict[str]
    host: str
    keep_alive: bool
    name: str  # the daemon's name from the path or the host
    prefix: str  # the path route's prefix, "" on a daemon's own host
    request_id: str


def parse_request(raw: bytes, proxy_domain: str) -> FrontRequest | None:
    """The request of a complete head (ending in CRLF CRLF) when the front
    door answers it, else None (aiohttp gets it)."""
    if len(raw) > HEAD_LIMIT or not raw.isascii():
        return None
    text = raw.decode("ascii")
    if _HEAD.fullmatch(text) is None:
        return None
    lines = text[:-4].split("\r\n")
    if len(lines) > MAX_HEADERS + 1:
        return None
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None:
        return None
    method, path, query = line.group(1), line.group(2), line.group(3) or ""
    pairs = []
    names = set()
    for header in lines[1:]:
        name, _, value = header.partition(":")
        lower = name.lower()
        if lower in names and lower in _SINGLETONS:
            return None
        names.add(lower)
        pairs.append((name, value.strip(" \t")))
    if "host" not in names or not names.isdisjoint(_NOT_HERE):
        return None
    headers = CIMultiDict(pairs)
    host = headers["Host"]
    if "token" in query or "%" in query:
        query = strip_token(query)
    tokens = (
        {t.strip().lower() for v in headers.getall("Connection") for t in v.split(",")}
        if "connection" in names
        else _NO_TOKENS
    )
    if "upgrade" in tokens:
        return None
    own = daemon_on_host(host, proxy_domain) if proxy_domain else None
    if own is not None:
        name, prefix, upstream_path = own, "", path
    elif path.startswith(PREFIX + "/"):
        cut = path.find("/", len(PREFIX) + 1)
        name = path[len(PREFIX) + 1 : cut]
        if cut < 0 or not name or "%" in name:
            return None  # the redirect to `<prefix>/`, or a name to decode
        prefix, upstream_path = PREFIX + "/" + name, path[cut:]
    else:
        return None
    return FrontRequest(
        raw,
        method,
        path,
        upstream_path,
        query,
        headers,
        host,
        "close" not in tokens,
        name,
        prefix,
        make_request_id(headers.get("X-Request-Id")),
    )


def log_path(path: str) -> str:
    """The path as the request log shows it (decoded, as aiohttp's `request.path`)."""
    if "%" in path:
        path = URL.build(path=path, encoded=True).path
    return loggable(path)


def _finish_head(
    status: int, reason: str, headers: CIMultiDict[str], request: FrontRequest
) -> bytes:
    """The response head, with what aiohttp's response adds (`Date`,
    `Server`, `Connection: close`) and the request id."""
    if "Date" not in headers:
        headers["Date"] = rfc822_formatted_time()
    headers.setdefault("Server", SERVER_SOFTWARE)
    if "Connection" not in headers and not request.keep_alive:
        headers["Connection"] = "close"
    headers["X-Request-Id"] = request.request_id
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


def response_head(
    status: int, reason: str, headers: CIMultiDict[str], request: FrontRequest, length: int
) -> bytes:
    """The head of an answer whose body (`length` bytes) goes with it, as
    `web.Response(body=...)` makes it."""
    if must_be_empty_body(request.method, status):
        if status not in (204, 304) and not 100 <= status < 200:
            headers["Content-Length"] = str(length)
    else:
        headers["Content-Length"] = str(length)
        if length:
            headers.setdefault("Content-Type", "application/octet-stream")
    return _finish_head(status, reason, headers, request)


def stream_head(
    status: int, reason: str, headers: CIMultiDict[str], request: FrontRequest
) -> tuple[bytes, bool]:
    """The head of a streamed answer, as `web.StreamResponse` makes it, and
    whether its body goes chunked."""
    chunked = False
    if must_be_empty_body(request.method, status):
        if "Content-Length" in headers and should_remove_content_length(request.method, status):
            del headers["Content-Length"]
    else:
        value = headers.get("Content-Length")
        if value is None:
            chunked = True
            headers["Transfer-Encoding"] = "chunked"
        if value != "0":
            headers.setdefault("Content-Type", "application/octet-stream")
    return _finish_head(status, reason, headers, request), chunked


def json_answer(
    status: int, payload: object, extra: dict[str, str], request: FrontRequest
) -> bytes:
    """A JSON error answer, as the request middleware renders a `HerderError`."""
    body = json.dumps(payload).encode()
    headers: CIMultiDict[str] = CIMultiDict(extra)
    headers["Content-Type"] = "application/json; charset=utf-8"
    headers["Content-Length"] = str(len(body))
    return _finish_head(status, http.HTTPStatus(status).phrase, headers, request) + body
