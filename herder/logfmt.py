"""Log lines for people (text) and machines (`--log-format json`).

Every line logged while a request is handled carries that request's id
(`request_id`), taken from a context variable the request middleware sets;
the same id is sent back in the `X-Request-Id` header, so a user's report
of a failed call finds its lines.

Nothing a client sent can forge or leak through a line: control characters
in messages are escaped (a `%0A` in a path stays on its line), anything
shaped like a JWT is shown as `***` wherever it is (messages, extra fields,
tracebacks), and aiohttp's own entries for malformed requests, whose
exception text quotes the raw header bytes, keep only the error's kind.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from .errors import RequestTimeout

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("herder_request_id", default="")

# Attributes every LogRecord has; anything else was passed in `extra=` and
# becomes a field of the JSON line.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


# Three base64url segments, the first a JSON object (`{"` is `eyJ`): a JWT.
JWT = re.compile(r"eyJ[A-Za-z0-9_=-]*\.[A-Za-z0-9_=-]*\.[A-Za-z0-9_=-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _ESCAPES.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    )


def redact(text: str) -> str:
    """`text` without tokens: anything shaped like a JWT is `***`."""
    return JWT.sub("***", text) if "eyJ" in text else text


def clean(text: str) -> str:
    """One line of `text`: control characters escaped, tokens redacted."""
    return _CONTROL.sub(_escape, redact(text))


def clean_lines(text: str) -> str:
    """A multi-line text (a traceback): each line cleaned, the lines kept."""
    return "\n".join(clean(line) for line in text.split("\n"))


class RequestIdFilter(logging.Filter):
    """Put the current request's id on every record (empty outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = REQUEST_ID.get()
        return True


class MalformedRequestFilter(logging.Filter):
    """aiohttp's entries for requests it could not parse keep only the kind of
    error (its exception quotes the raw request line or header, token and
    all); a body the server cut for being too slow is logged by the server
    and its request line, not again with a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiohttp") or not record.exc_info:
            return True
        exc = record.exc_info[1]
        if isinstance(exc, RequestTimeout):
            return False
        if isinstance(exc, HttpProcessingError):
            args = (record.getMessage(), type(exc).__name__, exc.code)
            record.msg, record.args = "%s: %s (HTTP %s)", args
            record.exc_info = None
            record.exc_text = None
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
            "message": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and value not in ("", None):
                if isinstance(value, str):
                    value = redact(value)
                elif not isinstance(value, int | float | bool):
                    value = redact(str(value))
                entry[key] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry)


class TextFormatter(_SecondCachedTime):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = clean(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        request_id = getattr(record, "request_id", "")
        if request_id:
            line = f"{line} [{clean(str(request_id))}]"
        if record.exc_info:
            line += "\n" + clean_lines(self.formatException(record.exc_info))
        if record.stack_info:
            line += "\n" + clean_lines(self.formatStack(record.stack_info))
        return line


def configure_logging(log_format: str) -> None:
    # No format shows them, and a record is made for every request.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(MalformedRequestFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
