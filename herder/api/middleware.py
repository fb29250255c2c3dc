"""The request middleware: request ids, open CORS, errors as JSON, the request log, 499.

`request_middleware` wraps every handler; `send_request_id` (an
`on_response_prepare` hook) names the request id on every response.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import HerderError, NotFound, PayloadTooLarge
from ..logfmt import REQUEST_ID
from ..proxy.origins import daemon_on_host
from . import keys
from .proxy import proxy_on_own_origin

log = logging.getLogger("herder")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROXY_PREFIX = "/daemon/v1/proxy/"
INSPECT_PREFIX = "/token/v1/inspect/"
# Three base64url segments, the first a JSON object (`{"` is `eyJ`): a JWT.
_JWT = re.compile(r"eyJ[A-Za-z0-9_=-]*\.[A-Za-z0-9_=-]*\.[A-Za-z0-9_=-]*")

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}


_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# Request ids: a random prefix per process and a counter, unique without
# asking the OS for randomness on every request.
_ID_PREFIX = secrets.token_hex(4) + "-"
_next_id = itertools.count(1).__next__


# What the request log and metrics record for a request cancelled before its
# answer (the client left, or the server is shutting down), as nginx does.
CLIENT_CLOSED = 499


def _request_id(request: web.Request) -> str:
    """The caller's `X-Request-Id` when it is sane (it goes into logs), else a new one."""
    given = request.headers.get("X-Request-Id")
    if given and _CLIENT_REQUEST_ID.fullmatch(given):
        return given
    return f"{_ID_PREFIX}{_next_id():x}"


def _loggable(path: str) -> str:
    """The path without anything secret (the query string, which may carry
    `?token=`, is never logged): `/token/v1/inspect/<token>` with the token
    hidden, and anything shaped like a JWT hidden wherever it is
    (`//token/v1/inspect/<jwt>` is a 404, and a client may put its token in
    any path)."""
    if path.startswith(INSPECT_PREFIX):
        return INSPECT_PREFIX + "***"
    return _JWT.sub("***", path) if "eyJ" in path else path


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware every request passes (one layer: it is on the
    proxy's hot path).

    - Open CORS, as the original herder: any origin may call the API; not on
      proxied paths, where a daemon answers its own preflights and sets its
      own CORS headers. Preflights are answered here and not logged.
    - `HerderError`s rendered as `{"error": ...}`; anything else is a logged 500.
    - One log line per request, carrying its request id (sent back as
      `X-Request-Id`, and set for every line logged while handling it), and
      the request counted in the metrics.
    """
    path = request.path
    method = request.method
    cors = not path.startswith(PROXY_PREFIX)
    domain = request.app[keys.SETTINGS].proxy_domain
    if domain and (own_origin := daemon_on_host(request.host, domain)) is not None:
        # `<Name>.<PROXY_DOMAIN>`: every path is the daemon's, none the herder's.
        handler = functools.partial(proxy_on_own_origin, name=own_origin)
        cors = False
    if cors and method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return web.Response(status=204, headers=CORS_HEADERS)
    request_id = _request_id(request)
    request[keys.REQUEST_ID] = request_id
    context_token = REQUEST_ID.set(request_id)
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
    except HerderError as exc:
        status = exc.status
        response = web.json_response(exc.payload(), status=exc.status, headers=exc.headers)
    except web.HTTPRequestEntityTooLarge:
        status = 413
        response = web.json_response({"error": PayloadTooLarge.message}, status=413)
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise
        reason = exc.reason if exc.status != 404 else NotFound.message
        response = web.json_response(
            {"error": reason.lower()}, status=exc.status, headers=_safe_headers(exc)
        )
    except asyncio.CancelledError:
        # The client went, or the server is shutting down: not a server error.
        status = CLIENT_CLOSED
        raise
    except Exception:
        log.exception("unhandled error in %s %s", method, _loggable(path))
        response = web.json_response(
            {"error": "internal error", "request_id": request_id}, status=500
        )
    finally:
        _log_request(method, _loggable(path), status, time.monotonic() - started, request_id)
        request.app[keys.METRICS].request(method, status)
        REQUEST_ID.reset(context_token)
    if cors and not response.prepared:
        response.headers.update(CORS_HEADERS)
    return response


def _log_request(method: str, path: str, status: int, seconds: float, request_id: str) -> None:
    """The request's log line (`extra` fields for the JSON format).

    The record is made and handled directly: `Logger.info` would also walk
    the stack for the caller's file and line, which no format here prints,
    and this line is logged for every request."""
    if not log.isEnabledFor(logging.INFO):
        return
    ms = round(seconds * 1000, 1)
    record = log.makeRecord(
        log.name,
        logging.INFO,
        __file__,
        0,
        "%s %s %s %.1fms",
        (method, path, status, ms),
        None,
        "request",
        {"method": method, "path": path, "status": status, "ms": ms, "request_id": request_id},
    )
    log.handle(record)


async def send_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every response, WebSocket upgrades and streams included, names its request id."""
    request_id = request.get(keys.REQUEST_ID)
    if request_id:
        response.headers["X-Request-Id"] = request_id


def _safe_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k in ("Allow",)}
