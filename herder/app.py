"""The application factory: `create_app(settings)` reads like a table of contents."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from . import appkeys, attach, health, proxy, tokens
from .errors import HerderError, NotFound, PayloadTooLarge
from .ledger import Ledger
from .runtime import DockerRuntime
from .settings import Settings
from .signing import instance_id, load_keypair

log = logging.getLogger("herder")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render `HerderError`s as `{"error": ...}`; anything else is a logged 500."""
    request_id = request.headers.get("X-Request-Id") or secrets.token_hex(6)
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except HerderError as exc:
        status = exc.status
        return web.json_response(exc.payload(), status=exc.status)
    except web.HTTPRequestEntityTooLarge:
        status = 413
        return web.json_response({"error": PayloadTooLarge.message}, status=413)
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise
        reason = exc.reason if exc.status != 404 else NotFound.message
        return web.json_response(
            {"error": reason.lower()}, status=exc.status, headers=_safe_headers(exc)
        )
    except Exception:
        log.exception("unhandled error in %s %s [%s]", request.method, request.path, request_id)
        return web.json_response({"error": "internal error", "request_id": request_id}, status=500)
    finally:
        log.info(
            "%s %s %s %.1fms [%s]",
            request.method,
            request.path,  # never the query string: it may carry a token
            status,
            (time.monotonic() - started) * 1000,
            request_id,
        )


def _safe_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k in ("Allow",)}


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Open CORS, as the original herder: any origin may call the API."""
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return web.Response(status=204, headers=CORS_HEADERS)
    response = await handler(request)
    if not response.prepared:
        response.headers.update(CORS_HEADERS)
    return response


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[cors_middleware, error_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[appkeys.SETTINGS] = settings
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_runtime)
    app.cleanup_ctx.append(proxy.upstreams_context)
    app.cleanup_ctx.append(attach.attach_hub_context)
    app.router.add_routes(health.routes)
    app.router.add_routes(tokens.routes)
    app.router.add_routes(proxy.routes)
    app.router.add_routes(attach.routes)
    return app


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
