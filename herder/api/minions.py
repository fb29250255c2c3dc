"""`POST /minion/v1/spawn` and `GET /minion/v1/envs`."""

from __future__ import annotations

import logging

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
from ..openapi import (
    ANY_BYTES,
    BOOL,
    INT,
    NO_CREDITS,
    NUM,
    STR,
    UNAUTHORIZED,
    Body,
    Docs,
    Op,
    arr,
    obj,
)
from ..runtime import RuntimeUnavailable
from ..runtime.base import OutputStream
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


log = logging.getLogger("herder.minions")

routes = web.RouteTableDef()


@routes.post("/minion/v1/spawn")
async def spawn(request: web.Request) -> web.StreamResponse:
    claims = await require_claims(request)
    settings = request.app[keys.SETTINGS]
    minions = request.app[keys.MINIONS]
    minions.check_admission()  # a full queue refuses before the body is read
    spawn_request = await read_spawn_request(request, settings.max_body_bytes)
    async with minions.session(claims, spawn_request) as run:
        result = run.result
        headers = {
            "X-Minion-Exit-Code": str(result.exit_code),
            "X-Minion-Duration": f"{result.duration:.3f}",
            "X-Minion-Credits": str(run.credits),
        }
        if run.output_name is not None and result.output_stream is not None:
            return await _send_file(request, result.output_stream, run.output_name, headers)
        body = {
            "StdOut": as_text(result.stdout),
            "StdErr": run.stderr_text(),
            "ExitCode": result.exit_code,
            "Duration": round(result.duration, 3),
        }
        if result.oom_killed:
            body["OOMKilled"] = True
        if result.disk_full:
            body["DiskFull"] = True
        return web.json_response(body, headers=headers)


async def _send_file(
    request: web.Request, stream: OutputStream, name: str, headers: dict[str, str]
) -> web.StreamResponse:
    """The output file, from the engine to the client a chunk at a time (the
    herder never holds it whole)."""
    content_type = mime_type(name)
    response = web.StreamResponse(headers=headers | output_headers(name, content_type))
    response.content_type = content_type
    response.content_length = stream.size
    await response.prepare(request)
    try:
        async for chunk in stream.chunks():
            await response.write(chunk)
    except (OSError, RuntimeUnavailable):
        # Headers are sent: the client sees a body shorter than its length.
        log.warning("the output file %r of a minion broke off", name[:64])
        response.force_close()
        return response
    await response.write_eof()
    return response


@routes.get("/minion/v1/envs")
async def envs(request: web.Request) -> web.Response:
    """The environments and their images, and whether each image is built here."""
    return web.json_response({"envs": await request.app[keys.MINIONS].envs()})


# -- OpenAPI docs of these routes (herder.openapi) ---------------------------------

_MINION_FORM = obj(["env"], env=STR, output=STR)
_MINION_FORM["additionalProperties"] = {"type": "string", "contentMediaType": ANY_BYTES}
docs: Docs = {
    "/minion/v1/spawn": {
        "POST": Op(
            "Run a minion",
            "minions",
            description="Runs `sh /minion/main.sh` in the env's image once; every field "
            "but `env` and `output` is a file in `/minion/<field>`. With `output`, the "
            "answer is that file's bytes (MIME type from its extension).",
            auth="token",
            body=Body(
                "env, optional output file name, files by field name",
                {
                    "multipart/form-data": _MINION_FORM,
                    "application/x-www-form-urlencoded": _MINION_FORM,
                },
            ),
            responses={
                200: (
                    "the run",
                    obj(
                        ["StdOut", "StdErr", "ExitCode", "Duration"],
                        StdOut=STR,
                        StdErr=STR,
                        ExitCode=INT,
                        Duration=NUM,
                        OOMKilled=BOOL,
                    ),
                ),
                400: "unknown env (lists them) or bad file name",
                401: UNAUTHORIZED,
                402: NO_CREDITS,
                404: "image missing",
                429: "too many minions running and queued (`Retry-After` says when to retry)",
                413: "body too large",
                504: ("timeout, with the partial output", obj(error=STR, StdOut=STR, StdErr=STR)),
            },
        )
    },
    "/minion/v1/envs": {
        "GET": Op(
            "The environments and their images",
            "minions",
            responses={
                200: (
                    "the envs",
                    obj(
                        ["envs"],
                        envs=arr(
                            obj(["name", "image", "available"], name=STR, image=STR, available=BOOL)
                        ),
                    ),
                )
            },
        )
    },
}
