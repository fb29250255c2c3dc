"""The request log line and request ids, shared by the request middleware
(`herder.api.middleware`) and the proxy's front door (`herder.proxy.front`):
every answered request gets one line, whichever path served it."""

from __future__ import annotations

import itertools
import logging
import re
import secrets

log = logging.getLogger("herder")

INSPECT_PREFIX = "/token/v1/inspect/"
# Three base64url segments, the first a JSON object (`{"` is `eyJ`): a JWT.
_JWT = re.compile(r"eyJ[A-Za-z0-9_=-]*\.[A-Za-z0-9_=-]*\.[A-Za-z0-9_=-]*")
# What the request log and metrics record for a request cancelled before its
# answer (the client left, or the server is shutting down), as nginx does.
CLIENT_CLOSED = 499

_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# Request ids: a random prefix per process and a counter, unique without
# asking the OS for randomness on every request.
_ID_PREFIX = secrets.token_hex(4) + "-"
_next_id = itertools.count(1).__next__


def request_id(given: str | None) -> str:
    """The caller's `X-Request-Id` when it is sane (it goes into logs), else a new one."""
    if given and _CLIENT_REQUEST_ID.fullmatch(given):
        return given
    return f"{_ID_PREFIX}{_next_id():x}"


def loggable(path: str) -> str:
    """The path without anything secret (the query string, which may carry
    `?token=`, is never logged): `/token/v1/inspect/<token>` with the token
    hidden, and anything shaped like a JWT hidden wherever it is
    (`//token/v1/inspect/<jwt>` is a 404, and a client may put its token in
    any path)."""
    if path.startswith(INSPECT_PREFIX):
        return INSPECT_PREFIX + "***"
    return _JWT.sub("***", path) if "eyJ" in path else path


def log_request(method: str, path: str, status: int, seconds: float, request_id: str) -> None:
    """The request's log line (`extra` fields for the JSON format); `path`
    as `loggable` made it.

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
