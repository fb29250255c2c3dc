"""`POST /minion/v1/spawn` and `GET /minion/v1/envs`."""

from __future__ import annotations

from aiohttp import web

from ..errors import BadRequest
from ..minions import (
    CONTROL_FIELDS,
    MAX_CONTROL_BYTES,
    MAX_FILES,
    SpawnRequest,
    as_text,
    check_file_name,
    check_files,
    mime_type,
    output_headers,
)
from . import keys
from .auth import require_claims
from .inputs import read_form


class _Form:
    """Collects fields, refusing duplicates and keeping control fields apart."""

    def __init__(self) -> None:
        self.control: dict[str, str] = {}
        self.files: dict[str, bytes] = {}

    def add(self, name: str, value: bytes) -> None:
        if name in CONTROL_FIELDS:
            if name in self.control:
                raise BadRequest(f"field {name!r} given twice")
            if len(value) > MAX_CONTROL_BYTES:
                raise BadRequest(f"field {name!r} is too long")
            try:
                self.control[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"field {name!r} is not UTF-8") from None
            return
        check_file_name(name)
        if name in self.files:
            raise BadRequest(f"file {name!r} given twice")
        if len(self.files) >= MAX_FILES:
            raise BadRequest(f"too many files (at most {MAX_FILES})")
        self.files[name] = value


async def read_spawn_request(request: web.Request, max_bytes: int) -> SpawnRequest:
    """Parse an urlencoded or multipart spawn form, never holding more than
    `max_bytes` of body; `env` and `output` may also come in the query string
    (as Go's `FormValue` allowed)."""
    form = _Form()
    for item in await read_form(request, max_bytes, max_fields=MAX_FILES + len(CONTROL_FIELDS)):
        form.add(item.name, item.data)
    for name in sorted(CONTROL_FIELDS):
        if name not in form.control and name in request.query:
            form.add(name, request.query[name].encode("utf-8"))
    output = form.control.get("output") or None
    if output is not None:
        check_file_name(output)
    return SpawnRequest(env=form.control.get("env"), output=output, files=check_files(form.files))


routes = web.RouteTableDef()


@routes.post("/minion/v1/spawn")
async def spawn(request: web.Request) -> web.StreamResponse:
    claims = await require_claims(request)
    settings = request.app[keys.SETTINGS]
    spawn_request = await read_spawn_request(request, settings.max_body_bytes)
    run = await request.app[keys.MINIONS].spawn(claims, spawn_request)
    result = run.result
    headers = {
        "X-Minion-Exit-Code": str(result.exit_code),
        "X-Minion-Duration": f"{result.duration:.3f}",
        "X-Minion-Credits": str(run.credits),
    }
    if run.output_name is not None and result.output is not None:
        content_type = mime_type(run.output_name)
        return web.Response(
            body=result.output,
            content_type=content_type,
            headers=headers | output_headers(run.output_name, content_type),
        )
    body = {
        "StdOut": as_text(result.stdout),
        "StdErr": run.stderr_text(),
        "ExitCode": result.exit_code,
        "Duration": round(result.duration, 3),
    }
    if result.oom_killed:
        body["OOMKilled"] = True
    return web.json_response(body, headers=headers)


@routes.get("/minion/v1/envs")
async def envs(request: web.Request) -> web.Response:
    """The environments and their images, and whether each image is built here."""
    return web.json_response({"envs": await request.app[keys.MINIONS].envs()})
