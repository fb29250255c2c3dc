"""Log lines for people (text) and machines (`--log-format json`).

Every line logged while a request is handled carries that request's id
(`request_id`), taken from a context variable the request middleware sets;
the same id is sent back in the `X-Request-Id` header, so a user's report
of a failed call finds its lines.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("herder_request_id", default="")

# Attributes every LogRecord has; anything else was passed in `extra=` and
# becomes a field of the JSON line.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class RequestIdFilter(logging.Filter):
    """Put the current request's id on every record (empty outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = REQUEST_ID.get()
        return True


class _SecondCachedTime(logging.Formatter):
    """`formatTime` as `logging.Formatter`'s default, with the seconds part
    formatted once per second (a line is logged for every request)."""

    _cached: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached_second, stamp = self._cached
        if second != cached_second:
            stamp = time.strftime(self.default_time_format, self.converter(record.created))
            self._cached = (second, stamp)
        msec_format = self.default_msec_format
        return msec_format % (stamp, record.msecs) if msec_format else stamp


class JsonFormatter(_SecondCachedTime):
    """One JSON object per line: time, level, logger, message, request_id,
    any `extra=` fields, and the exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and value not in ("", None):
                entry[key] = value if isinstance(value, int | float | bool | str) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class TextFormatter(_SecondCachedTime):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", "")
        return f"{line} [{request_id}]" if request_id else line


def configure_logging(log_format: str) -> None:
    # No format shows them, and a record is made for every request.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
