"""The application factory: `create_app(settings)` reads like a table of contents."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

from . import (
    appkeys,
    attach,
    daemon_exec,
    daemons,
    eventlog,
    golems,
    health,
    logs,
    metrics,
    minions,
    node,
    proxy,
    relay,
    tokens,
)
from .errors import HerderError, NotFound, PayloadTooLarge
from .ledger import Ledger
from .logfmt import REQUEST_ID
from .metering import Meter
from .proxy_origins import daemon_on_host
from .reconcile import Reconciler
from .runtime import DockerRuntime
from .settings import Settings
from .signing import instance_id, load_keypair
from .streams import StreamLimits

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


def loggable_path(request: web.Request) -> str:
    """The path without anything secret: never the query string (it may carry
    `?token=`), `/token/v1/inspect/<token>` with the token hidden, and
    anything shaped like a JWT hidden wherever it is (`//token/v1/inspect/<jwt>`
    is a 404, and a client may put its token in any path)."""
    return _loggable(request.path)


def _loggable(path: str) -> str:
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
    domain = request.app[appkeys.SETTINGS].proxy_domain
    if domain and (own_origin := daemon_on_host(request.host, domain)) is not None:
        # `<Name>.<PROXY_DOMAIN>`: every path is the daemon's, none the herder's.
        handler = functools.partial(proxy.proxy_on_own_origin, name=own_origin)
        cors = False
    if cors and method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return web.Response(status=204, headers=CORS_HEADERS)
    request_id = _request_id(request)
    request[appkeys.REQUEST_ID] = request_id
    context_token = REQUEST_ID.set(request_id)
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
    except HerderError as exc:
        status = exc.status
        response = web.json_response(exc.payload(), status=exc.status)
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
        request.app[appkeys.METRICS].request(method, status)
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


async def _send_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every response, WebSocket upgrades and streams included, names its request id."""
    request_id = request.get(appkeys.REQUEST_ID)
    if request_id:
        response.headers["X-Request-Id"] = request_id


def _safe_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k in ("Allow",)}


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[request_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[appkeys.SETTINGS] = settings
    app[appkeys.METRICS] = metrics.Metrics()
    app[appkeys.STREAMS] = StreamLimits(settings.streams_per_subject, settings.streams_total)
    app.on_response_prepare.append(_send_request_id)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_runtime)
    app.cleanup_ctx.append(minions.minions_ctx)
    app.cleanup_ctx.append(_daemons)
    app.cleanup_ctx.append(_reconciler)
    app.cleanup_ctx.append(_metering)
    app[appkeys.RELAY] = relay.Relay(settings.golem_wait, settings.relay_minions_per_webstrate)
    app.on_shutdown.append(relay.on_shutdown)
    app.on_shutdown.append(_end_streams)
    app.cleanup_ctx.append(golems.golems_context)
    app.cleanup_ctx.append(proxy.upstreams_context)
    app.cleanup_ctx.append(attach.attach_hub_context)
    app.cleanup_ctx.append(eventlog.container_event_log)
    app.router.add_routes(health.routes)
    app.router.add_routes(metrics.routes)
    app.router.add_routes(node.routes)
    app.router.add_routes(logs.routes)
    app.router.add_routes(daemon_exec.routes)
    app.router.add_routes(tokens.routes)
    app.router.add_routes(minions.routes)
    app.router.add_routes(daemons.routes)
    app.router.add_routes(relay.routes)
    app.router.add_routes(golems.routes)
    app.router.add_routes(proxy.routes)
    app.router.add_routes(attach.routes)
    return app


async def _end_streams(app: web.Application) -> None:
    """At shutdown, before aiohttp waits for handlers: log follows end and
    attach sockets close (code 1001), so none holds the shutdown up."""
    app[appkeys.STREAMS].closing.set()
    if appkeys.ATTACH in app:
        await app[appkeys.ATTACH].close()


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    app[appkeys.INSTANCE] = instance_id(settings.data_dir)
    ledger = await Ledger.open(settings.database_url)
    keys = load_keypair(settings.data_dir)
    app[appkeys.LEDGER] = ledger
    app[appkeys.TOKENS] = tokens.TokenService(keys, settings, ledger)
    yield
    await ledger.close()


async def _runtime(app: web.Application) -> AsyncIterator[None]:
    runtime = DockerRuntime(app[appkeys.SETTINGS].docker_url)
    app[appkeys.RUNTIME] = runtime
    yield
    await runtime.close()


async def _daemons(app: web.Application) -> AsyncIterator[None]:
    app[appkeys.DAEMONS] = daemons.DaemonService(
        app[appkeys.SETTINGS],
        app[appkeys.LEDGER],
        app[appkeys.RUNTIME],
        app[appkeys.INSTANCE],
        app[appkeys.METRICS],
    )
    yield


# How long start-up waits for the first reconcile (Docker may be down).
async def _reconciler(app: web.Application) -> AsyncIterator[None]:
    """Reconcile the registry with Docker, then follow its events (owned task).

    Serving does not wait for it (with Docker down the herder still answers,
    `/healthz` with 503); metering does (see `Meter.run`).
    """
    reconciler = Reconciler(
        app[appkeys.SETTINGS], app[appkeys.LEDGER], app[appkeys.RUNTIME], app[appkeys.INSTANCE]
    )
    app[appkeys.RECONCILER] = reconciler
    async with owned_task(reconciler.run(), "reconciler"):
        yield


async def _metering(app: web.Application) -> AsyncIterator[None]:
    reconciler = app[appkeys.RECONCILER]
    meter = Meter(
        app[appkeys.SETTINGS],
        app[appkeys.LEDGER],
        app[appkeys.RUNTIME],
        app[appkeys.INSTANCE],
        recover=reconciler.reconcile,
        ready=reconciler.reconciled,
    )
    app[appkeys.METER] = meter
    async with owned_task(meter.run(), "metering"):
        yield


@contextlib.asynccontextmanager
async def owned_task(
    coro: Coroutine[Any, Any, None], name: str
) -> AsyncIterator[asyncio.Task[None]]:
    """Run a background loop for the lifetime of the block: cancelled and
    awaited on exit; if it ever ends with an error, that error is logged."""
    task = asyncio.create_task(coro, name=name)

    def report(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.error("background task %s died", name, exc_info=done.exception())

    task.add_done_callback(report)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
