"""The request middleware: request ids, open CORS, errors as JSON, the request log, 499.

`request_middleware` wraps every handler; `send_request_id` (an
`on_response_prepare` hook) names the request id on every response.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import HerderError, NotFound, PayloadTooLarge
from ..logfmt import REQUEST_ID
from ..proxy.origins import daemon_on_host
from ..requestlog import CLIENT_CLOSED, log_request, loggable
from ..requestlog import request_id as make_request_id
from . import keys
from .proxy import proxy_on_own_origin

log = logging.getLogger("herder")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROXY_PREFIX = "/daemon/v1/proxy/"

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}


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
    request_id = make_request_id(request.headers.get("X-Request-Id"))
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
        log.exception("unhandled error in %s %s", method, loggable(path))
        response = web.json_response(
            {"error": "internal error", "request_id": request_id}, status=500
        )
    finally:
        log_request(method, loggable(path), status, time.monotonic() - started, request_id)
        request.app[keys.METRICS].request(method, status)
        REQUEST_ID.reset(context_token)
    if cors and not response.prepared:
        response.headers.update(CORS_HEADERS)
    return response


async def send_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every response, WebSocket upgrades and streams included, names its request id."""
    request_id = request.get(keys.REQUEST_ID)
    if request_id:
        response.headers["X-Request-Id"] = request_id


def _safe_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k in ("Allow",)}
