"""The daemon routes: spawn, ls, kill (one or a group), logs, exec (one or a group).

- `GET /daemon/v1/logs/{name}?tail=N&follow=1`: a daemon's stdout and stderr
  as written (plain text, streamed). With `follow=1` the response stays open
  and carries new output until the daemon stops or the client goes away; a
  subject may have a limited number of follows and attach sockets open
  (`herder.stream_limits`).
- `POST /daemon/v1/exec/{name}` and `POST /daemon/v1/exec?group=G` take JSON
  `{"cmd": ["sh", "-c", "..."], "timeout": 10}` and answer each daemon's
  output and exit code. The herder waits at most `timeout` seconds (default
  10, at most 60) per daemon and keeps at most 64 KiB of each stream; the
  daemons of a group run the command concurrently. A command still running
  when the herder gives up on it (time out, or both streams full) is killed
  with its children where the herder can see the engine's processes
  (`runtime.proctree`); `Killed` says whether it was.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from aiohttp import web

from ..daemons import (
    MAX_FILES,
    SpawnRequest,
    check_file_name,
    check_group,
    check_image,
    check_name,
    check_node,
    check_ports,
    parse_gpus,
)
from ..errors import BadRequest
from ..openapi import (
    ANY_BYTES,
    BAD_INPUT,
    BOOL,
    GROUP,
    INT,
    JSON,
    NAME,
    NO_CREDITS,
    NUM,
    STR,
    TEXT,
    TOO_MANY_STREAMS,
    UNAUTHORIZED,
    UNKNOWN_DAEMON,
    Body,
    Docs,
    Op,
    Param,
    Schema,
    arr,
    obj,
)
from ..runtime.base import OutputChunk
from . import keys
from .auth import require_claims
from .inputs import parse_json, plain_int, query_flag, read_form, read_json

RESERVED_FIELDS = frozenset({"name", "image", "ports", "group", "node", "gpus"})
PORTS_EXPECTED = 'ports must be a JSON list of port numbers, e.g. [80, "8080"]'

MAX_TAIL = 100_000
# Seconds between checks that a follow's client is still there (and that
# the herder is not shutting down).
DISCONNECT_CHECK = 1.0
# `?follow=` takes 1, true and yes (not `on`, unlike `?wipe=` and `?binary=`).
FOLLOW_ON = frozenset({"1", "true", "yes"})

DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 60.0
MAX_ARGS = 256
MAX_ARGS_BYTES = 64 << 10
EXPECTED = 'expected a JSON object {"cmd": ["sh", "-c", "..."]}'


# -- reading requests ------------------------------------------------------------


def parse_ports(raw: str | None) -> tuple[int, ...]:
    """`[80, 8080]` or `["80","8080"]` (JSON); absent, empty or `[]`: no ports."""
    if raw is None or not raw.strip():
        return ()
    value = parse_json(raw, PORTS_EXPECTED)
    if not isinstance(value, list):
        raise BadRequest(PORTS_EXPECTED)
    return check_ports(value)


async def parse_spawn(request: web.Request) -> SpawnRequest:
    """Read the spawn form (urlencoded or multipart): name, image, ports, files."""
    if not request.can_read_body:
        raise BadRequest("expected a form with name and image")
    max_bytes = request.app[keys.SETTINGS].max_body_bytes
    values: dict[str, str] = {}
    files: dict[str, bytes] = {}
    seen: set[str] = set()
    for item in await read_form(request, max_bytes):
        key = item.name
        if key in seen:
            raise BadRequest(f"field {key[:100]!r} is given twice")
        seen.add(key)
        if key in RESERVED_FIELDS:
            if item.is_file:
                raise BadRequest(f"{key} must be a plain form field")
            values[key] = item.text()
            continue
        check_file_name(key)
        files[key] = item.data
        if len(files) > MAX_FILES:
            raise BadRequest(f"at most {MAX_FILES} files")
    if "name" not in values:
        raise BadRequest("name is required")
    if "image" not in values:
        raise BadRequest("image is required")
    return SpawnRequest(
        name=check_name(values["name"]),
        image=check_image(values["image"].strip()),
        ports=parse_ports(values.get("ports")),
        files=files,
        group=check_group(values["group"].strip()) if values.get("group", "").strip() else None,
        node=check_node(values.get("node")),
        gpus=parse_gpus(values.get("gpus")),
    )


def parse_command(body: Any) -> tuple[list[str], float]:
    if not isinstance(body, dict):
        raise BadRequest(EXPECTED)
    cmd = body.get("cmd")
    if isinstance(cmd, str):
        cmd = ["sh", "-c", cmd]
    if (
        not isinstance(cmd, list)
        or not cmd
        or len(cmd) > MAX_ARGS
        or not all(isinstance(arg, str) for arg in cmd)
        or any("\x00" in arg for arg in cmd)
        or sum(len(arg) for arg in cmd) > MAX_ARGS_BYTES
    ):
        raise BadRequest('cmd must be a non-empty list of strings, e.g. ["sh", "-c", "ls"]')
    raw_timeout = body.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(raw_timeout, bool) or not isinstance(raw_timeout, int | float):
        raise BadRequest("timeout must be a number of seconds")
    if not 0 < raw_timeout <= MAX_TIMEOUT:
        raise BadRequest(f"timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds")
    return cmd, float(raw_timeout)


def _wipe(request: web.Request) -> bool:
    """`?wipe=`: any of its values on (1, true, yes, on) wipes."""
    return any(query_flag(value) for value in request.query.getall("wipe", []))


def _tail(raw: str | None) -> int | None:
    if raw is None or raw in ("", "all"):
        return None
    return plain_int(
        raw, MAX_TAIL, f"tail must be a number of lines from 0 to {MAX_TAIL}, or 'all'"
    )


# -- routes ------------------------------------------------------------------------

routes = web.RouteTableDef()


@routes.get("/daemon/v1/logs/{name}")
async def daemon_logs(request: web.Request) -> web.StreamResponse:
    claims = await require_claims(request)
    tail = _tail(request.query.get("tail"))
    follow = query_flag(request.query.get("follow"), on=FOLLOW_ON)
    chunks = await request.app[keys.DAEMONS].logs(
        claims.sub, request.match_info["name"], tail=tail, follow=follow
    )
    if not follow:
        return await _send_logs(request, chunks, follow=False)
    streams = request.app[keys.STREAMS]
    async with streams.hold(claims.sub):
        return await _send_logs(request, chunks, follow=True, until=streams.closing)


@routes.post("/daemon/v1/exec/{name}")
async def exec_one(request: web.Request) -> web.Response:
    claims = await require_claims(request)
    cmd, timeout = parse_command(await read_json(request, EXPECTED))
    result = await request.app[keys.DAEMONS].exec(
        claims.sub, request.match_info["name"], cmd, timeout
    )
    return web.json_response(result)


@routes.post("/daemon/v1/exec")
async def exec_group(request: web.Request) -> web.Response:
    claims = await require_claims(request)
    group = request.query.get("group")
    if group is None:
        raise BadRequest("give ?group=G, or exec one daemon at /daemon/v1/exec/{name}")
    group = check_group(group)
    cmd, timeout = parse_command(await read_json(request, EXPECTED))
    results = await request.app[keys.DAEMONS].exec_group(claims.sub, group, cmd, timeout)
    return web.json_response(results)


@routes.post("/daemon/v1/spawn")
async def spawn(request: web.Request) -> web.Response:
    claims = await require_claims(request)
    spawn_request = await parse_spawn(request)
    spawned = await request.app[keys.DAEMONS].spawn(claims, spawn_request)
    return web.json_response(spawned.to_json())


@routes.get("/daemon/v1/ls")
async def ls(request: web.Request) -> web.Response:
    claims = await require_claims(request)
    group = request.query.get("group")
    group = check_group(group) if group is not None else None
    return web.json_response(await request.app[keys.DAEMONS].list(claims.sub, group))


@routes.route("GET", "/daemon/v1/kill/{name}")
@routes.route("POST", "/daemon/v1/kill/{name}")
@routes.route("DELETE", "/daemon/v1/kill/{name}")
async def kill(request: web.Request) -> web.Response:
    claims = await require_claims(request)
    wipe = _wipe(request)
    result = await request.app[keys.DAEMONS].kill(claims.sub, request.match_info["name"], wipe=wipe)
    return web.json_response(result)


@routes.route("GET", "/daemon/v1/kill")
@routes.route("POST", "/daemon/v1/kill")
@routes.route("DELETE", "/daemon/v1/kill")
async def kill_group(request: web.Request) -> web.Response:
    """`?group=G`: kill every daemon of the caller's group G."""
    claims = await require_claims(request)
    group = request.query.get("group")
    if group is None:
        raise BadRequest("give ?group=G, or kill one daemon at /daemon/v1/kill/{name}")
    wipe = _wipe(request)
    result = await request.app[keys.DAEMONS].kill_group(claims.sub, check_group(group), wipe=wipe)
    return web.json_response(result)


# -- streaming logs ------------------------------------------------------------


async def _send_logs(
    request: web.Request,
    chunks: AsyncGenerator[OutputChunk, None],
    *,
    follow: bool,
    until: asyncio.Event | None = None,
) -> web.StreamResponse:
    """The daemon's output; a follow ends when `until` is set (shutdown)."""
    async with contextlib.aclosing(chunks):
        # Without follow, pull the first chunk before answering, so an engine
        # failure is still a JSON error; with follow, answer at once (the
        # daemon may be silent for a long time).
        first = None if follow else await anext(chunks, None)
        response = web.StreamResponse(
            headers={"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        if first is not None:
            await response.write(first.data)
        pump = asyncio.ensure_future(_pump(chunks, response))
        try:
            # A client that goes away is noticed at the next write; a silent
            # daemon writes nothing, so its follow is checked on as well.
            while not pump.done():
                await asyncio.wait({pump}, timeout=DISCONNECT_CHECK)
                if not pump.done() and (_gone(request) or (until and until.is_set())):
                    pump.cancel()
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        if not _gone(request):
            await response.write_eof()
    return response


async def _pump(chunks: AsyncGenerator[OutputChunk, None], response: web.StreamResponse) -> None:
    async for chunk in chunks:
        await response.write(chunk.data)


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


# -- OpenAPI docs of these routes (herder.openapi) ---------------------------------

_DAEMON_FORM = obj(["name", "image"], name=STR, image=STR, ports=STR, group=STR)
_DAEMON_FORM["additionalProperties"] = {"type": "string", "contentMediaType": ANY_BYTES}
_LISTED: Schema = obj(
    ["Id", "Names", "Image", "State", "Status", "Ports", "Created", "Labels"],
    Id=STR,
    Names=arr(STR),
    Image=STR,
    State=STR,
    Status=STR,
    Ports=arr(obj(PrivatePort=INT, PublicPort=INT, Type=STR, IP=STR)),
    Created=INT,
    Labels={"type": "object", "additionalProperties": STR},
)
_KILLED = obj(["Killed"], Killed=arr(STR), Wiped=BOOL, Group=STR)
_KILL_ONE = Op(
    "Stop and remove a daemon",
    "daemons",
    auth="token",
    params=(NAME, Param("wipe", "`true` also deletes its data volume", BOOL)),
    responses={200: ("what was killed", _KILLED), 401: UNAUTHORIZED, 404: UNKNOWN_DAEMON},
)
_KILL_GROUP = Op(
    "Stop and remove every daemon of a group",
    "daemons",
    auth="token",
    params=(
        Param("group", "the group", required=True),
        Param("wipe", "`true` also deletes their data", BOOL),
    ),
    responses={200: ("what was killed", _KILLED), 400: BAD_INPUT, 401: UNAUTHORIZED},
)
_DAEMONS: Docs = {
    "/daemon/v1/spawn": {
        "POST": Op(
            "Start (or restart) a daemon",
            "daemons",
            description="`ports` is a JSON list (`[80]`); every other field is a file "
            "copied into the daemon's data volume. A name the caller has already is "
            "replaced, keeping its data.",
            auth="token",
            body=Body(
                "name, image, ports, group, files",
                {
                    "multipart/form-data": _DAEMON_FORM,
                    "application/x-www-form-urlencoded": _DAEMON_FORM,
                },
            ),
            responses={
                200: (
                    "the daemon",
                    obj(
                        ["Name", "Address", "Ports"],
                        Name=STR,
                        Address=STR,
                        Ports={"type": "object", "additionalProperties": INT},
                    ),
                ),
                400: BAD_INPUT,
                401: UNAUTHORIZED,
                402: NO_CREDITS,
                404: "image not present locally",
            },
        )
    },
    "/daemon/v1/ls": {
        "GET": Op(
            "The caller's daemons",
            "daemons",
            auth="token",
            params=(GROUP,),
            responses={
                200: ("Docker's list format", arr(_LISTED)),
                400: BAD_INPUT,
                401: UNAUTHORIZED,
            },
        )
    },
    "/daemon/v1/kill/{name}": {"GET": _KILL_ONE, "POST": _KILL_ONE, "DELETE": _KILL_ONE},
    "/daemon/v1/kill": {"GET": _KILL_GROUP, "POST": _KILL_GROUP, "DELETE": _KILL_GROUP},
}

_LOGS: Docs = {
    "/daemon/v1/logs/{name}": {
        "GET": Op(
            "A daemon's output",
            "daemons",
            auth="token",
            params=(
                NAME,
                Param("tail", "the last N lines", INT),
                Param("follow", "`1`: stream until the daemon stops", INT),
            ),
            responses={
                200: ("stdout and stderr, plain text", STR, TEXT),
                401: UNAUTHORIZED,
                404: UNKNOWN_DAEMON,
                429: TOO_MANY_STREAMS,
            },
        )
    }
}

_EXEC_BODY = Body(
    "the command",
    {JSON: obj(["cmd"], cmd=arr(STR), timeout={"type": "number", "maximum": 60})},
)
_EXEC_RESULT = obj(
    ["ExitCode", "StdOut", "StdErr"],
    Daemon=STR,
    Name=STR,
    ExitCode={"type": ["integer", "null"]},
    StdOut=STR,
    StdErr=STR,
    TimedOut=BOOL,
    Killed=BOOL,
    Truncated=BOOL,
    Duration=NUM,
)
_EXEC: Docs = {
    "/daemon/v1/exec/{name}": {
        "POST": Op(
            "Run a command in a daemon",
            "daemons",
            auth="token",
            params=(NAME,),
            body=_EXEC_BODY,
            responses={
                200: ("the result", _EXEC_RESULT),
                400: BAD_INPUT,
                401: UNAUTHORIZED,
                404: UNKNOWN_DAEMON,
            },
        )
    },
    "/daemon/v1/exec": {
        "POST": Op(
            "Run a command in every daemon of a group",
            "daemons",
            auth="token",
            params=(Param("group", "the group", required=True),),
            body=_EXEC_BODY,
            responses={
                200: ("one result per daemon", arr(_EXEC_RESULT)),
                400: BAD_INPUT,
                401: UNAUTHORIZED,
            },
        )
    },
}

docs: Docs = {**_DAEMONS, **_LOGS, **_EXEC}
