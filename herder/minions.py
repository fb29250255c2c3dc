"""Minions: short code runs in a language environment (`POST /minion/v1/spawn`).

A spawn names an environment (`env`, mapped to an image by the `images`
setting), optionally an `output` file to hand back, and carries every other
form field as a file written to `/minion/<field name>`. The image runs
`sh /minion/main.sh`; the run is charged `max(1, ceil(seconds)) * credit_rate`
credits to the token's subject, timeouts included.
"""

from __future__ import annotations

import logging
import math
import mimetypes
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from . import appkeys
from .errors import BadRequest, ImageNotFound, MinionTimeout, NoCredits, UnknownEnv
from .inputs import read_form
from .ledger import Ledger
from .metrics import Metrics
from .runtime import RunResult, RunSpec, Runtime
from .runtime.base import (
    LABEL_INSTANCE,
    LABEL_JTI,
    LABEL_KIND,
    LABEL_MANAGED,
    LABEL_NAME,
    LABEL_SUBJECT,
)
from .settings import Settings
from .tokens import Claims, require_claims

log = logging.getLogger("herder.minions")

KIND = "minion"
WORKDIR = "/minion"
CONTROL_FIELDS = frozenset({"env", "output"})
MAX_FILES = 200
MAX_NAME_BYTES = 1024  # a whole relative name
MAX_COMPONENT_BYTES = 255  # one path component, as most file systems allow
MAX_DEPTH = 16
MAX_CONTROL_BYTES = 1024  # the `env` and `output` fields
MAX_OUTPUT_FILE_BYTES = 64 << 20
TMP_BYTES = 64 << 20


# -- validation (pure) --------------------------------------------------------


def check_file_name(name: str) -> str:
    """`name` if it is a plain relative name under /minion; else `BadRequest`.

    Components are separated by `/`; none may be empty, `.` or `..`; no NUL
    or other control character; bounded length and depth.
    """
    shown = name[:80].encode("unicode_escape").decode()
    if not name:
        raise BadRequest("empty file name")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise BadRequest(f"file name too long (at most {MAX_NAME_BYTES} bytes): {shown!r}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise BadRequest(f"file name with a control character (NUL, newline...): {shown!r}")
    if name.startswith("/"):
        raise BadRequest(f"file name must be relative to /minion: {shown!r}")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BadRequest(f"file name with an empty, '.' or '..' component: {shown!r}")
    if len(parts) > MAX_DEPTH:
        raise BadRequest(f"file name nested too deep (at most {MAX_DEPTH} levels): {shown!r}")
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES for part in parts):
        raise BadRequest(f"file name component too long (at most 255 bytes): {shown!r}")
    return name


def check_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """Every name checked, and no name both a file and a directory of another."""
    if len(files) > MAX_FILES:
        raise BadRequest(f"too many files (at most {MAX_FILES})")
    for name in files:
        check_file_name(name)
    directories = {
        "/".join(name.split("/")[:i]) for name in files for i in range(1, name.count("/") + 1)
    }
    clash = sorted(directories & files.keys())
    if clash:
        raise BadRequest(f"{clash[0]!r} is both a file and a directory")
    return files


def image_for(settings: Settings, env: str | None) -> str:
    """The image of environment `env`; `UnknownEnv` (listing the known ones) otherwise."""
    known = sorted(settings.images)
    if not env:
        raise UnknownEnv(f"env is required; known environments: {', '.join(known)}", known=known)
    image = settings.images.get(env)
    if image is None:
        shown = env[:64].encode("unicode_escape").decode()
        raise UnknownEnv(
            f"unknown env {shown!r}; known environments: {', '.join(known)}", known=known
        )
    return image


def credits_for(seconds: float, rate: int) -> tuple[int, int]:
    """(billed seconds, credits) of a run: whole seconds rounded up, at least one."""
    billed = max(1, math.ceil(seconds))
    return billed, billed * rate


def mime_type(name: str) -> str:
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


# Types a browser runs as a document or script: a minion's output of one of
# these must never render in the herder's origin.
ACTIVE_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/javascript",
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "text/ecmascript",
        "text/xml",
        "application/xml",
        "text/xsl",
        "application/xslt+xml",
    }
)
OUTPUT_SANDBOX = "sandbox; default-src 'none'"


def output_headers(name: str, content_type: str) -> dict[str, str]:
    """Headers of an output file's response: never sniffed; an active type
    (HTML, SVG, JS, XML) is an attachment, and sandboxed should it render."""
    headers = {"X-Content-Type-Options": "nosniff"}
    if content_type in ACTIVE_TYPES or content_type.endswith("+xml"):
        base = name.rsplit("/", 1)[-1]
        ascii_name = "".join(
            c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in base
        )
        disposition = f'attachment; filename="{ascii_name}"'
        if ascii_name != base:
            disposition += "; filename*=UTF-8''" + urllib.parse.quote(base, safe="")
        headers["Content-Disposition"] = disposition
        headers["Content-Security-Policy"] = OUTPUT_SANDBOX
    return headers


# -- the request ----------------------------------------------------------------


@dataclass(frozen=True)
class SpawnRequest:
    env: str | None
    output: str | None
    files: dict[str, bytes]


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


# -- the service ----------------------------------------------------------------


@dataclass(frozen=True)
class MinionRun:
    """A finished run and what it was charged."""

    env: str
    output_name: str | None
    result: RunResult
    credits: int
    memory_mb: int

    def stderr_text(self) -> str:
        """stderr, with a note when the run was killed for memory or its
        output file could not be returned."""
        notes = []
        if self.result.oom_killed:
            notes.append(f"killed: out of memory (limit {self.memory_mb} MiB)")
        if self.output_name is not None and self.result.output is None:
            notes.append(
                self.result.output_note or f"output file {self.output_name!r} not returned"
            )
        return _text(self.result.stderr) + "".join(f"\n[herder: {note}]\n" for note in notes)


class Minions:
    """Spawns minions for token holders and charges their runs."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        runtime: Runtime,
        instance: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.ledger = ledger
        self.runtime = runtime
        self.instance = instance
        # Credits held by each subject's minions in flight: the most each
        # can cost. A run starts only when the balance covers what is held,
        # so concurrent runs overdraw a subject by at most one run.
        self._held: dict[str, int] = {}

    def labels(self, claims: Claims, env: str) -> dict[str, str]:
        return {
            LABEL_MANAGED: "1",
            LABEL_KIND: KIND,
            LABEL_SUBJECT: claims.sub,
            LABEL_JTI: claims.jti,
            LABEL_NAME: env,
            LABEL_INSTANCE: self.instance,
        }

    async def spawn(self, claims: Claims, request: SpawnRequest) -> MinionRun:
        """Run one minion to its end and charge it; raises `MinionTimeout`
        (carrying the partial output) when it ran over its time."""
        image = image_for(self.settings, request.env)
        assert request.env is not None
        balance = await self.ledger.balance(claims.sub)
        if balance.remaining <= 0:
            raise NoCredits(f"no credits left for {claims.sub}")
        # No await between this check and the hold, so racing spawns see each other.
        held = self._held.get(claims.sub, 0)
        if held and balance.remaining - held <= 0:
            raise NoCredits(
                f"{balance.remaining} credits left, and the minions {claims.sub} "
                f"runs already may cost {held}: wait for them to finish"
            )
        most = credits_for(self.settings.minion_timeout, self.settings.credit_rate)[1]
        self._held[claims.sub] = held + most
        try:
            return await self._run(claims, request, image)
        finally:
            left = self._held[claims.sub] - most
            if left:
                self._held[claims.sub] = left
            else:
                del self._held[claims.sub]

    async def _run(self, claims: Claims, request: SpawnRequest, image: str) -> MinionRun:
        assert request.env is not None
        spec = RunSpec(
            image=image,
            files=request.files,
            labels=self.labels(claims, request.env),
            memory_bytes=self.settings.minion_memory_mb << 20,
            nano_cpus=int(self.settings.minion_cpus * 1e9),
            pids=self.settings.minion_pids,
            network=self.settings.network if self.settings.minion_network else None,
            timeout=self.settings.minion_timeout,
            output_limit=self.settings.minion_output_limit,
            output_file=request.output,
            output_file_limit=MAX_OUTPUT_FILE_BYTES,
            tmp_bytes=TMP_BYTES,
            workdir=WORKDIR,
            env={"HOME": "/tmp"},  # the root is read-only; tools want a writable home
        )
        try:
            result = await self.runtime.run_once(spec)
        except ImageNotFound:
            self.metrics.spawned(KIND, ok=False)
            raise ImageNotFound(
                f"the image {image!r} of env {request.env!r} is not built on this herder; "
                f"run `herder images build {request.env}`"
            ) from None
        except Exception:
            self.metrics.spawned(KIND, ok=False)
            raise
        self.metrics.spawned(KIND, ok=not result.timed_out)
        self.metrics.run_seconds(KIND, result.duration)
        seconds, credits = credits_for(result.duration, self.settings.credit_rate)
        await self.ledger.charge(claims.sub, claims.jti, KIND, request.env, seconds, credits)
        if result.timed_out:
            raise MinionTimeout(
                f"minion ran over its {self.settings.minion_timeout:g} s and was killed",
                StdOut=_text(result.stdout),
                StdErr=_text(result.stderr),
                ExitCode=None,
                Duration=round(result.duration, 3),
            )
        return MinionRun(
            env=request.env,
            output_name=request.output,
            result=result,
            credits=credits,
            memory_mb=self.settings.minion_memory_mb,
        )


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


# -- routes ---------------------------------------------------------------------

routes = web.RouteTableDef()


@routes.post("/minion/v1/spawn")
async def spawn(request: web.Request) -> web.StreamResponse:
    claims = await require_claims(request)
    settings = request.app[appkeys.SETTINGS]
    spawn_request = await read_spawn_request(request, settings.max_body_bytes)
    run = await request.app[appkeys.MINIONS].spawn(claims, spawn_request)
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
        "StdOut": _text(result.stdout),
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
    settings = request.app[appkeys.SETTINGS]
    runtime = request.app[appkeys.RUNTIME]
    listed = [
        {"name": name, "image": image, "available": await runtime.image_exists(image)}
        for name, image in sorted(settings.images.items())
    ]
    return web.json_response({"envs": listed})


async def minions_ctx(app: web.Application) -> AsyncIterator[None]:
    """The minion service. Minions a crash left behind are removed at start by
    the reconciler (`herder.reconcile`), with every unknown container."""
    minions = Minions(
        app[appkeys.SETTINGS],
        app[appkeys.LEDGER],
        app[appkeys.RUNTIME],
        app[appkeys.INSTANCE],
        app[appkeys.METRICS],
    )
    app[appkeys.MINIONS] = minions
    yield
