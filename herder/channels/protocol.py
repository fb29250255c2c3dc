"""PyCloud's Redis messages: the names of channels and keys, reading a
request, PyCloud's script string, and the replies (pure functions, no I/O).

A request is a JSON object published on `<prefix>.<verb>` (or added to the
Stream `<prefix>.requests` with the fields `verb` and `payload`); its answer
is a JSON object published on `<prefix>.<verb>.<request id>`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from ..daemons import (
    MAX_FILES,
    SpawnRequest,
    check_file_name,
    check_group,
    check_image,
    check_name,
    check_ports,
)
from ..errors import BadRequest, PayloadTooLarge

Verb = Literal["create", "status", "remove"]
VERBS: tuple[Verb, ...] = ("create", "status", "remove")
# Request ids become parts of channel and key names: printable, no spaces,
# none of the glob characters a client's PSUBSCRIBE pattern would trip on.
REQUEST_ID = re.compile(r"[A-Za-z0-9_.:+/=@-]{1,128}")
SESSION = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}-[A-Za-z0-9_.-]{1,128}")
# The id of a payload too large to parse, when it comes first: enough to answer 413.
_LEADING_ID = re.compile(rb'\A\s*\{\s*"id"\s*:\s*"([A-Za-z0-9_.:+/=@-]{1,128})"')
SCRIPT_KEYS = frozenset({"port", "ports", "name", "group", "files"})
GROUP = "herder"  # the consumer group of the request streams


@dataclass(frozen=True)
class Keys:
    """Every channel and key name under one prefix."""

    prefix: str

    def channel(self, verb: str) -> str:
        return f"{self.prefix}.{verb}"

    def reply_channel(self, verb: str, request_id: str) -> str:
        return f"{self.prefix}.{verb}.{request_id}"

    @property
    def rank(self) -> str:
        return f"{self.prefix}.rank"

    @property
    def stream(self) -> str:
        """The Stream every herder reads in one consumer group (at-least-once)."""
        return f"{self.prefix}.requests"

    def inbox(self, instance: str) -> str:
        """The Stream of requests another herder passed to this instance's sessions."""
        return f"{self.prefix}.requests.{instance}"

    def claim(self, verb: str, request_id: str) -> str:
        """Held (SET NX with a lease) by the herder acting on a request."""
        return f"{self.prefix}.claim.{verb}.{request_id}"

    def attempt(self, verb: str, request_id: str) -> str:
        """Who first took a request, and when (a successor looks for its work)."""
        return f"{self.prefix}.attempt.{verb}.{request_id}"

    def reply(self, verb: str, request_id: str) -> str:
        """The answer given, kept so a request seen again gets it again."""
        return f"{self.prefix}.reply.{verb}.{request_id}"

    def resent(self, verb: str, request_id: str) -> str:
        """Held for a moment by the herder that sends a kept answer again."""
        return f"{self.prefix}.resent.{verb}.{request_id}"

    def alive(self, instance: str) -> str:
        """A herder's last rank announcement, expiring when it stops announcing."""
        return f"{self.prefix}.alive.{instance}"


# -- reading requests ---------------------------------------------------------


class Dropped(Exception):
    """A payload nobody can be answered for (no readable id): logged, counted, dropped."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Request:
    verb: Verb
    id: str
    body: dict[str, Any]

    @property
    def token(self) -> str | None:
        token = self.body.get("token")
        return token if isinstance(token, str) and token else None


class Refused(Exception):
    """A request with a readable id that is refused before anything is done."""

    def __init__(self, request_id: str, error: BadRequest | PayloadTooLarge) -> None:
        super().__init__(error.message)
        self.request_id = request_id
        self.error = error


def read_request(verb: Verb, raw: bytes, max_bytes: int) -> Request:
    """The request in `raw`; `Dropped` without a readable id, `Refused`
    (answered with an error) when too large."""
    if len(raw) > max_bytes:
        leading = _LEADING_ID.match(raw[:1024])
        too_large = PayloadTooLarge(f"payload of {len(raw)} bytes is above {max_bytes}")
        if leading is None:
            raise Dropped("too_large", too_large.message)
        raise Refused(leading.group(1).decode(), too_large)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise Dropped("not_json", "payload is not JSON") from None
    if not isinstance(body, dict):
        raise Dropped("not_json", "payload is not a JSON object")
    request_id = body.get("id")
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        raise Dropped("no_id", "payload has no readable id (1 to 128 of A-Z a-z 0-9 _.:+/=@-)")
    return Request(verb=verb, id=request_id, body=body)


def session_of(request: Request) -> str:
    """The daemon Name a status or remove request names."""
    session = request.body.get("session")
    if not isinstance(session, str) or not SESSION.fullmatch(session):
        raise BadRequest("session must be a daemon Name, as create answered it")
    return session


def default_name(request_id: str) -> str:
    """A create without `name` gets one from its request id: the same id
    always means the same daemon (a successor finds its predecessor's)."""
    return "s" + hashlib.sha256(request_id.encode()).hexdigest()[:12]


def parse_script(script: Any, request_id: str) -> SpawnRequest:
    """PyCloud's script string: the image on the first line, a JSON object
    after it (`port` or `ports`, `name`, `group`, `files` name -> text)."""
    if not isinstance(script, str) or not script.strip():
        raise BadRequest("script must be the image on its first line and a JSON object after it")
    first, _, rest = script.strip().partition("\n")
    image = check_image(first.strip())
    if not rest.strip():
        raise BadRequest('script needs a JSON object after the image line (e.g. {"port": 80})')
    try:
        config = json.loads(rest)
    except (ValueError, RecursionError):
        raise BadRequest("script: the lines after the image are not JSON") from None
    if not isinstance(config, dict):
        raise BadRequest("script: the lines after the image must be a JSON object")
    unknown = sorted(set(config) - SCRIPT_KEYS)
    if unknown:
        raise BadRequest(
            f"script: unknown key {str(unknown[0])[:100]!r} (known: {', '.join(sorted(SCRIPT_KEYS))})"
        )
    if "port" in config and "ports" in config:
        raise BadRequest("script: give port or ports, not both")
    ports: tuple[int, ...] = ()
    if "port" in config:
        ports = check_ports([config["port"]])
    elif "ports" in config:
        if not isinstance(config["ports"], list):
            raise BadRequest("script: ports must be a list of port numbers")
        ports = check_ports(config["ports"])
    name = config.get("name")
    if name is None:
        name = default_name(request_id)
    elif not isinstance(name, str):
        raise BadRequest("script: name must be a string")
    group = config.get("group")
    if group is not None and not isinstance(group, str):
        raise BadRequest("script: group must be a string")
    files_given = config.get("files", {})
    if not isinstance(files_given, dict) or not all(
        isinstance(v, str) for v in files_given.values()
    ):
        raise BadRequest("script: files must be an object of file name to text")
    if len(files_given) > MAX_FILES:
        raise BadRequest(f"script: at most {MAX_FILES} files")
    files = {check_file_name(str(k)): v.encode() for k, v in files_given.items()}
    return SpawnRequest(
        name=check_name(name),
        image=image,
        ports=ports,
        files=files,
        group=check_group(group) if group else None,
    )


# -- replies ------------------------------------------------------------------


def created(cloud: str, name: str, ports: dict[str, int], address: str) -> dict[str, Any]:
    return {"cloud": cloud, "id": name, "ports": ports, "address": address}


def session_status(cloud: str, session: str, running: bool) -> dict[str, Any]:
    return {"cloud": cloud, "id": session, "status": running}


def refused(cloud: str, verb: str, message: str, code: int, session: str | None) -> dict[str, Any]:
    """An error reply: PyCloud's fields, with `error` and the HTTP-equivalent `code`."""
    reply: dict[str, Any] = {"cloud": cloud, "id": session, "error": message, "code": code}
    if verb != "create":
        reply["status"] = False
    return reply
