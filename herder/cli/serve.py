"""`herder serve`: build the app from settings and run it."""

from __future__ import annotations

import asyncio
import logging
import sys

from .. import serving
from ..app import create_app, proxy_front
from ..ledger.migrate import SchemaBehind
from ..logfmt import JsonFormatter as JsonFormatter
from ..logfmt import configure_logging as _configure
from ..settings import Settings
from ..signing import load_keypair


def configure_logging(settings: Settings) -> None:
    _configure(settings.log_format)


log = logging.getLogger("herder.serve")


def event_loop(settings: Settings) -> asyncio.AbstractEventLoop:
    """uvloop's event loop (less CPU per proxied request than asyncio's)
    unless `settings.uvloop` is off or uvloop is not installed."""
    if settings.uvloop:
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed: serving on asyncio's event loop")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def serve(settings: Settings) -> int:
    configure_logging(settings)
    load_keypair(settings.data_dir)  # creates the key pair on first start
    open_files = serving.raise_open_files_limit()
    guards = serving.Guards.from_settings(settings, open_files)
    serving.log.info(
        "connections: at most %d, %d from one address", guards.max_connections, guards.per_client
    )
    loop = event_loop(settings)
    log.info("event loop: %s", type(loop).__module__.split(".")[0])
    try:
        app = create_app(settings)
        serving.run(app, settings, guards, loop, front=proxy_front(app))
    except SchemaBehind as exc:
        print(f"herder: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"herder: cannot serve on {settings.host}:{settings.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    return 0
