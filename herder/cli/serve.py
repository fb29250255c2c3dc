"""`herder serve`: build the app from settings and run it."""

from __future__ import annotations

import sys

from .. import serving
from ..app import create_app
from ..ledger.migrate import SchemaBehind
from ..logfmt import JsonFormatter as JsonFormatter
from ..logfmt import configure_logging as _configure
from ..settings import Settings
from ..signing import load_keypair


def configure_logging(settings: Settings) -> None:
    _configure(settings.log_format)


def serve(settings: Settings) -> int:
    configure_logging(settings)
    load_keypair(settings.data_dir)  # creates the key pair on first start
    open_files = serving.raise_open_files_limit()
    guards = serving.Guards.from_settings(settings, open_files)
    serving.log.info(
        "connections: at most %d, %d from one address", guards.max_connections, guards.per_client
    )
    try:
        serving.run(create_app(settings), settings, guards)
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
