"""Running commands in the caller's daemons: one by name, or a whole group.

`POST /daemon/v1/exec/{name}` and `POST /daemon/v1/exec?group=G` take JSON
`{"cmd": ["sh", "-c", "..."], "timeout": 10}` and answer each daemon's
output and exit code. Time and output are bounded: the herder waits at most
`timeout` seconds (default 10, at most 60) per daemon and keeps at most
64 KiB of each stream; the daemons of a group run the command concurrently.
A command still running when the herder gives up on it (time out, or both
streams full) is killed with its children where the herder can see the
engine's processes (`runtime.proctree`); `Killed` says whether it was.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from . import appkeys
from .daemons import check_group
from .errors import BadRequest, Conflict, NotFound
from .inputs import read_json
from .runtime.base import (
    LABEL_GROUP,
    LABEL_INSTANCE,
    LABEL_KIND,
    LABEL_MANAGED,
    LABEL_NAME,
    LABEL_SUBJECT,
    ContainerInfo,
    OnAnotherNode,
)
from .tokens import require_claims

DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 60.0
OUTPUT_LIMIT = 64 << 10
MAX_ARGS = 256
MAX_ARGS_BYTES = 64 << 10
EXPECTED = 'expected a JSON object {"cmd": ["sh", "-c", "..."]}'

routes = web.RouteTableDef()


async def caller_daemons(
    app: web.Application, subject: str, *, name: str | None = None, group: str | None = None
) -> list[ContainerInfo]:
    """The subject's daemons on this herder, by name (label or container name) or group."""
    labels = {
        LABEL_MANAGED: "1",
        LABEL_KIND: "daemon",
        LABEL_INSTANCE: app[appkeys.INSTANCE],
        LABEL_SUBJECT: subject,
    }
    if group is not None:
        labels[LABEL_GROUP] = group
    found = await app[appkeys.RUNTIME].list(labels)
    if name is not None:
        found = [c for c in found if name in (c.labels.get(LABEL_NAME), c.name)]
    return found


async def find_daemon(app: web.Application, subject: str, name: str) -> ContainerInfo:
    """The subject's daemon called `name`; 404 for unknown names and others' daemons."""
    found = await caller_daemons(app, subject, name=name)
    if not found:
        raise NotFound(f"no daemon named {name!r}")
    return found[0]


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


async def exec_in(
    app: web.Application, daemon: ContainerInfo, cmd: list[str], timeout: float
) -> dict[str, Any]:
    """Run `cmd` in one daemon; a stopped daemon is reported, not raised."""
    entry: dict[str, Any] = {
        "Name": daemon.name,
        "Daemon": daemon.labels.get(LABEL_NAME, daemon.name),
    }
    if daemon.state != "running":
        return {**entry, "ExitCode": None, "StdOut": "", "StdErr": "", "Error": "not running"}
    try:
        result = await app[appkeys.RUNTIME].exec(
            daemon.id, cmd, timeout=timeout, limit=OUTPUT_LIMIT
        )
    except (NotFound, Conflict) as exc:
        # A daemon on another node of a Swarm: the message names the node.
        error = exc.message if isinstance(exc, OnAnotherNode) else "not running"
        return {**entry, "ExitCode": None, "StdOut": "", "StdErr": "", "Error": error}
    return {
        **entry,
        "ExitCode": result.exit_code,
        "StdOut": result.stdout.decode(errors="replace"),
        "StdErr": result.stderr.decode(errors="replace"),
        "TimedOut": result.timed_out,
        "Killed": result.killed,
        "Truncated": result.truncated,
        "Duration": result.seconds,
    }


@routes.post("/daemon/v1/exec/{name}")
async def exec_one(request: web.Request) -> web.Response:
    claims = await require_claims(request)
    cmd, timeout = parse_command(await read_json(request, EXPECTED))
    daemon = await find_daemon(request.app, claims.sub, request.match_info["name"])
    return web.json_response(await exec_in(request.app, daemon, cmd, timeout))


@routes.post("/daemon/v1/exec")
async def exec_group(request: web.Request) -> web.Response:
    claims = await require_claims(request)
    group = request.query.get("group")
    if group is None:
        raise BadRequest("give ?group=G, or exec one daemon at /daemon/v1/exec/{name}")
    group = check_group(group)
    cmd, timeout = parse_command(await read_json(request, EXPECTED))
    daemons = await caller_daemons(request.app, claims.sub, group=group)
    results = await asyncio.gather(*(exec_in(request.app, d, cmd, timeout) for d in daemons))
    return web.json_response(sorted(results, key=lambda r: str(r["Name"])))
