"""Minions: short code runs in a language environment (`POST /minion/v1/spawn`,
whose handler is in `herder.api.minions`).

A spawn names an environment (`env`, mapped to an image by the `images`
setting), optionally an `output` file to hand back, and carries every other
form field as a file written to `/minion/<field name>`. The image runs
`sh /minion/main.sh`; the run is charged `max(1, ceil(seconds)) * credit_rate`
credits to the token's subject, timeouts included.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import mimetypes
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .admission import Admission, QueueFull
from .errors import BadRequest, ImageNotFound, MinionTimeout, UnknownEnv
from .holds import CreditHolds, MemoryHolds
from .ledger import Ledger
from .metrics import Metrics
from .pool import MinionPool
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
from .tokens import Claims

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


# -- the service ----------------------------------------------------------------


@dataclass(frozen=True)
class MinionRun:
    """A finished run and what it was charged. `result.output_stream` is the
    output file, to read while the run's session is open."""

    env: str
    output_name: str | None
    result: RunResult
    credits: int
    memory_mb: int
    disk_mb: int = 0

    def stderr_text(self) -> str:
        """stderr, with a note when the run was killed for memory, filled its
        /minion or its output file could not be returned."""
        notes = []
        if self.result.oom_killed:
            notes.append(f"killed: out of memory (limit {self.memory_mb} MiB)")
        if self.result.disk_full:
            notes.append(f"{WORKDIR} is full (MINION_DISK_MB: {self.disk_mb} MiB)")
        if (
            self.output_name is not None
            and self.result.output is None
            and self.result.output_stream is None
        ):
            notes.append(
                self.result.output_note or f"output file {self.output_name!r} not returned"
            )
        return as_text(self.result.stderr) + "".join(f"\n[herder: {note}]\n" for note in notes)


class MinionService:
    """Spawns minions for token holders and charges their runs.

    Runs pass admission control (`admission`: at most `MINION_CONCURRENCY`
    at once, `MINION_QUEUE` more waiting, more refused with 429) and take a
    warm container from `pool` when it has one. The app starts and closes
    the pool (`herder.app`)."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        runtime: Runtime,
        instance: str,
        metrics: Metrics | None = None,
        holds: CreditHolds | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.ledger = ledger
        self.runtime = runtime
        self.instance = instance
        # Credits held by each subject's minions in flight: the most each
        # can cost. A run starts only when the balance covers what is held,
        # so concurrent runs overdraw a subject by at most one run (in this
        # process's memory, or counted across herders: `herder.holds`).
        self.holds: CreditHolds = holds or MemoryHolds(ledger)
        self.admission = Admission(settings.minion_concurrency, settings.minion_queue)
        self.pool = MinionPool(runtime, settings.minion_pool, self.run_spec, instance)

    async def envs(self) -> list[dict[str, object]]:
        """The environments and their images, and whether each image is built here."""
        return [
            {"name": name, "image": image, "available": await self.runtime.image_exists(image)}
            for name, image in sorted(self.settings.images.items())
        ]

    def labels(self, claims: Claims, env: str) -> dict[str, str]:
        return {
            LABEL_MANAGED: "1",
            LABEL_KIND: KIND,
            LABEL_SUBJECT: claims.sub,
            LABEL_JTI: claims.jti,
            LABEL_NAME: env,
            LABEL_INSTANCE: self.instance,
        }

    def run_spec(
        self,
        env: str,
        labels: dict[str, str] | None = None,
        files: dict[str, bytes] | None = None,
        output: str | None = None,
    ) -> RunSpec:
        """The run of `env` with every limit: the same for pooled and cold runs."""
        settings = self.settings
        return RunSpec(
            image=image_for(settings, env),
            files=files or {},
            labels=labels or {},
            memory_bytes=settings.minion_memory_mb << 20,
            nano_cpus=int(settings.minion_cpus * 1e9),
            pids=settings.minion_pids,
            network=settings.network if settings.minion_network else None,
            timeout=settings.minion_timeout,
            output_limit=settings.minion_output_limit,
            output_file=output,
            output_file_limit=MAX_OUTPUT_FILE_BYTES,
            tmp_bytes=TMP_BYTES,
            disk_bytes=settings.minion_disk_mb << 20,
            workdir=WORKDIR,
            env={"HOME": "/tmp"},  # the root is read-only; tools want a writable home
        )

    def figures(self) -> dict[str, object]:
        """Admission and pool figures, for `/metrics` and `/node/v1/specs`."""
        admission = self.admission
        return {
            "Concurrency": admission.limit,
            "Queue": admission.queue,
            "Running": admission.running,
            "Waiting": admission.waiting,
            "Rejected": admission.rejected,
            "Pool": self.pool.figures(),
        }

    def check_admission(self) -> None:
        """429 (`QueueFull`) at once when the queue is full now: called
        before the request's body is read."""
        try:
            self.admission.check()
        except QueueFull:
            self.metrics.minion_rejected()
            raise

    async def spawn(self, claims: Claims, request: SpawnRequest) -> MinionRun:
        """`session`, with the output file read into `result.output`."""
        async with self.session(claims, request) as run:
            stream = run.result.output_stream
            if stream is None:
                return run
            data = b"".join([chunk async for chunk in stream.chunks()])
            result = dataclasses.replace(run.result, output=data, output_stream=None)
            return dataclasses.replace(run, result=result)

    @contextlib.asynccontextmanager
    async def session(self, claims: Claims, request: SpawnRequest) -> AsyncIterator[MinionRun]:
        """Run one minion to its end and charge it; the context gives the run,
        its output file readable until the context exits (then its container
        goes). Raises `MinionTimeout` (carrying the partial output) when it
        ran over its time and `QueueFull` (429) when too many runs wait."""
        image_for(self.settings, request.env)
        assert request.env is not None
        most = credits_for(self.settings.minion_timeout, self.settings.credit_rate)[1]
        async with self.holds.credits(claims.sub, most):
            async with self._run(claims, request) as run:
                yield run

    @contextlib.asynccontextmanager
    async def _run(self, claims: Claims, request: SpawnRequest) -> AsyncIterator[MinionRun]:
        env = request.env
        assert env is not None
        try:
            waited = await self.admission.acquire()
        except QueueFull:
            self.metrics.minion_rejected()
            raise
        self.metrics.minion_waited(waited)
        started = time.monotonic()
        holding = True
        entered = False
        spec = self.run_spec(env, self.labels(claims, env), request.files, request.output)
        try:
            async with self.runtime.run(spec, prepared=self.pool.take(env)) as result:
                entered = True
                # The run is over: its slot goes to the next (the output file
                # may still be read, from a container that runs nothing).
                self.admission.release(time.monotonic() - started)
                holding = False
                yield await self._charged(claims, env, request.output, result)
        except ImageNotFound:
            if entered:
                raise
            self.metrics.spawned(KIND, ok=False)
            raise ImageNotFound(
                f"the image {spec.image!r} of env {env!r} is not built on this herder; "
                f"run `herder images build {env}`"
            ) from None
        except Exception:
            if not entered:
                self.metrics.spawned(KIND, ok=False)
            raise
        finally:
            if holding:
                self.admission.release(time.monotonic() - started)

    async def _charged(
        self, claims: Claims, env: str, output: str | None, result: RunResult
    ) -> MinionRun:
        self.metrics.spawned(KIND, ok=not result.timed_out)
        self.metrics.run_seconds(KIND, result.duration)
        seconds, credits = credits_for(result.duration, self.settings.credit_rate)
        await self.ledger.charge(claims.sub, claims.jti, KIND, env, seconds, credits)
        if result.timed_out:
            raise MinionTimeout(
                f"minion ran over its {self.settings.minion_timeout:g} s and was killed",
                StdOut=as_text(result.stdout),
                StdErr=as_text(result.stderr),
                ExitCode=None,
                Duration=round(result.duration, 3),
            )
        return MinionRun(
            env=env,
            output_name=output,
            result=result,
            credits=credits,
            memory_mb=self.settings.minion_memory_mb,
            disk_mb=self.settings.minion_disk_mb,
        )


def as_text(data: bytes) -> str:
    """Output bytes as text, invalid UTF-8 replaced."""
    return data.decode("utf-8", errors="replace")
