"""`herder serve`: build the app from settings and run it."""

from __future__ import annotations

import json
import logging
import sys

from aiohttp import web

from ..app import create_app
from ..ledger.migrate import SchemaBehind
from ..settings import Settings
from ..signing import load_keypair


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def serve(settings: Settings) -> int:
    configure_logging(settings)
    load_keypair(settings.data_dir)  # creates the key pair on first start
    try:
        web.run_app(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            print=lambda line: print(line, file=sys.stderr),
            access_log=None,
        )
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
