"""One error hierarchy; `herder.app.request_middleware` maps it to HTTP.

Every error a client may see is a `HerderError` with a status and a public
message. Anything else is a bug: it is logged with its traceback and the
client gets a plain 500.
"""

from __future__ import annotations

from typing import Any


class HerderError(Exception):
    status: int = 500
    message: str = "internal error"

    def __init__(
        self, message: str | None = None, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.extra = extra
        self.headers = dict(headers or {})  # sent with the error (e.g. `Retry-After`)

    def payload(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


class BadRequest(HerderError):
    status = 400
    message = "bad request"


class UnknownEnv(BadRequest):
    message = "unknown environment"


class Unauthorized(HerderError):
    status = 401
    message = "missing or invalid token"


class NoCredits(HerderError):
    status = 402
    message = "no credits left"


class NotFound(HerderError):
    status = 404
    message = "not found"


class ImageNotFound(NotFound):
    message = "image not available"


class MethodNotAllowed(HerderError):
    status = 405
    message = "method not allowed"


class Conflict(HerderError):
    status = 409
    message = "conflict"


class RequestTimeout(HerderError):
    status = 408
    message = "request body too slow"


class PayloadTooLarge(HerderError):
    status = 413
    message = "request body too large"


class TooManyRequests(HerderError):
    status = 429
    message = "too many requests"


class UpstreamError(HerderError):
    status = 502
    message = "upstream not answering"


class ServiceUnavailable(HerderError):
    status = 503
    message = "service unavailable"


class MinionTimeout(HerderError):
    status = 504
    message = "minion timed out"


class UpstreamTimeout(HerderError):
    status = 504
    message = "upstream timed out"


class SettingsError(Exception):
    """A bad setting: the CLI prints it as one line and exits with code 2."""
