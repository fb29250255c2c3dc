"""The Runtime protocol: everything the herder asks of a container engine.

Services (minions, daemons, golems) talk to a `Runtime`, never to Docker,
so another engine (Docker Swarm, for several machines) can be added without
touching the routes. Implementations map engine errors to `HerderError`s or
`RuntimeUnavailable`; they never leak an engine's raw message to clients.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import Conflict, ServiceUnavailable

LABEL_MANAGED = "herder.managed"
LABEL_KIND = "herder.kind"
LABEL_SUBJECT = "herder.subject"
LABEL_JTI = "herder.jti"
LABEL_NAME = "herder.name"
LABEL_INSTANCE = "herder.instance"
LABEL_GROUP = "herder.group"


class RuntimeUnavailable(ServiceUnavailable):
    message = "container engine unavailable"


class OnAnotherNode(Conflict):
    """The container runs on a node whose engine this herder does not drive
    (attach and exec need it); the message names the node."""

    message = "it runs on another node"

    def __init__(
        self, message: str | None = None, *, node_id: str = "", hostname: str = ""
    ) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.hostname = hostname or node_id


@dataclass(frozen=True)
class NodeInfo:
    """One machine of the engine (a Swarm node; the engine's host itself for Docker)."""

    id: str
    hostname: str
    address: str
    role: str = "manager"
    availability: str = "active"
    state: str = "ready"
    cpus: float = 0.0
    memory_bytes: int = 0
    gpus: int = 0
    leader: bool = False

    def reference(self) -> dict[str, str]:
        """What spawn replies name the node by (`Node`)."""
        return {"ID": self.id, "Hostname": self.hostname, "Address": self.address}


@dataclass(frozen=True)
class ContainerInfo:
    """What the herder knows of one container."""

    id: str
    name: str
    image: str
    state: str  # created, running, exited, ...
    status: str  # human text, e.g. "Up 3 seconds"
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # container port -> host port
    address: str = ""
    created: str = ""
    created_at: float = 0.0  # epoch seconds (to the second from `list`, exact from `inspect`)
    finished_at: float = 0.0  # epoch seconds the container last stopped (inspect only)
    started_at: float = 0.0  # epoch seconds a Swarm service's running task started (else 0)
    node: NodeInfo | None = None  # where it runs (the Swarm runtime; None: the engine's host)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class ServiceSpec:
    """A long-lived container (daemon or golem).

    `ports` are container TCP ports published on `bind_address` with host
    ports that the engine assigns (no listen-and-close race). `volume`, when
    set, is a named volume mounted at every path of `mounts`; `files` are
    copied into `files_dir` through the engine's API before start (no host
    directory binds, so a remote engine works). `network`, when set, is the
    only network the container joins (see `Runtime.ensure_network`); None
    leaves it on the engine's default bridge.
    """

    name: str
    image: str
    labels: dict[str, str]
    ports: tuple[int, ...] = ()
    bind_address: str = "0.0.0.0"
    volume: str | None = None
    mounts: tuple[str, ...] = ()
    files: dict[str, bytes] = field(default_factory=dict)
    files_dir: str = "/minion"
    env: dict[str, str] = field(default_factory=dict)
    cmd: tuple[str, ...] | None = None
    memory_bytes: int = 512 << 20
    nano_cpus: int = 1_000_000_000
    pids: int = 256
    restart: str = "unless-stopped"
    open_stdin: bool = True
    user: str | None = None
    cap_drop_all: bool = False
    cap_add: tuple[str, ...] = ()
    extra_hosts: tuple[str, ...] = ()
    shm_bytes: int | None = None
    network: str | None = None
    node: str | None = None  # a node id to run on (the Swarm runtime's placement)
    gpus: int = 0  # GPUs to reserve (the Swarm runtime's generic resource `gpu`)


@dataclass(frozen=True)
class RuntimeEvent:
    """A container event: `action` is Docker's (start, die, oom, destroy, ...)."""

    action: str
    id: str
    labels: dict[str, str]
    exit_code: int | None = None
    time: float = 0.0


@dataclass(frozen=True)
class OutputChunk:
    """A piece of a container's output: `stream` 1 is stdout, 2 is stderr."""

    stream: int
    data: bytes


@dataclass(frozen=True)
class ExecResult:
    """What one command run in a container gave back (see `Runtime.exec`)."""

    exit_code: int | None  # None when it did not finish in time
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    truncated: bool = False
    seconds: float = 0.0
    killed: bool = False  # still running when given up on, and killed (see runtime.proctree)


@dataclass(frozen=True)
class RunSpec:
    """A one-shot run (a minion): copy `files` in, run, collect, remove.

    `files` maps plain relative names (already validated) to their bytes;
    they are written under `workdir`, owned by the run's user. `cmd` None
    runs the image's own command. `output_limit` caps each of stdout and
    stderr; `output_file`, when set, names a file under `workdir` to copy
    out after the run (a regular file of at most `output_file_limit` bytes,
    reached without following any symlink). `network` names the network the
    run joins (see `Runtime.ensure_network`); None: no network at all.
    `workdir` is a tmpfs of `disk_bytes` (its pages count against the run's
    memory when the run writes them), so nothing a run writes reaches the
    host's disk.
    """

    image: str
    files: dict[str, bytes]
    labels: dict[str, str]
    memory_bytes: int = 256 << 20
    nano_cpus: int = 1_000_000_000
    pids: int = 128
    network: str | None = None
    timeout: float = 30.0
    output_limit: int = 1 << 20
    output_file: str | None = None
    output_file_limit: int = 64 << 20
    tmp_bytes: int = 64 << 20
    disk_bytes: int = 128 << 20
    nofile: int = 1024
    uid: int = 1000
    gid: int = 1000
    workdir: str = "/minion"
    env: dict[str, str] = field(default_factory=dict)
    cmd: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RunResult:
    """What a one-shot run left behind.

    `stdout`/`stderr` hold at most `RunSpec.output_limit` bytes each, plus a
    note when cut (then `*_truncated`). `exit_code` is None when the run was
    killed for its timeout (`timed_out`). `output` is the output file's
    bytes, or None with `output_note` saying why (missing, not a regular
    file, too large). `output_stream`, from `Runtime.run` only, is the
    output file to read while the run's context is open (then `output` is
    None). `disk_full` tells that the workdir had no room left at the end;
    `pooled` that the run used a container prepared before it
    (`Runtime.prepare_run`).
    """

    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    exit_code: int | None
    duration: float
    timed_out: bool
    oom_killed: bool
    output: bytes | None = None
    output_note: str | None = None
    output_stream: OutputStream | None = None
    disk_full: bool = False
    pooled: bool = False


class OutputStream(Protocol):
    """A run's output file, read from the engine as it is consumed."""

    size: int

    def chunks(self) -> AsyncIterator[bytes]:
        """The file's bytes, in order; `size` of them in all."""


class Attachment(Protocol):
    """A live connection to a running container's stdin, stdout and stderr."""

    async def write(self, data: bytes) -> None:
        """Send bytes to the container's stdin (waits while the engine is slow to take them)."""

    async def read(self) -> OutputChunk | None:
        """The next piece of output as it is written; None once the container
        has stopped or the attachment was closed."""

    async def close(self) -> None:
        """Detach (idempotent); the container keeps running and its stdin stays open."""


class Runtime(Protocol):
    async def ping(self) -> None:
        """Raise `RuntimeUnavailable` unless the engine answers. Called by /healthz."""

    async def version(self) -> dict[str, Any]:
        """The engine's version document (Docker: /version)."""

    async def nodes(self) -> list[NodeInfo]:
        """The machines workloads can run on: the Swarm's nodes, or the one
        engine's host. Called by `GET /node/v1/nodes` and to resolve a
        spawn's `node`."""

    async def list(self, labels: dict[str, str], *, all: bool = True) -> list[ContainerInfo]:
        """Containers carrying all `labels` (exact key=value matches)."""

    async def inspect(self, ref: str) -> ContainerInfo | None:
        """One container by exact id or exact name; None when it does not exist."""

    async def remove(self, ref: str) -> None:
        """Force-remove a container and its anonymous volumes (an image's
        `VOLUME`s; named volumes, like a daemon's data, stay); a container
        already gone counts as done."""

    async def ensure_network(self, name: str) -> None:
        """Make the network `name` when it is missing: a bridge with labels
        `herder.managed=1` on which containers reach the host (and through it
        the outside) but not each other. Idempotent, and safe when several
        herders race to make it (an existing network counts as done; should a
        race leave two of that name, all but the oldest are removed).

        `run_service` and `run_once` call it for their spec's network (once per
        process, and again when the engine says the network is gone), so a
        network removed by hand is made again by the next spawn. Raises
        `RuntimeUnavailable` when the engine refuses.
        """

    async def run_service(self, spec: ServiceSpec) -> ContainerInfo:
        """Create and start a long-lived container; return it as running.

        Called by daemon and golem spawns. Raises `ImageNotFound` when the
        image is not present locally (it is never pulled) and `Conflict`
        when the name is taken. A container that fails after create is
        removed before the error is raised.
        """

    async def start(self, ref: str) -> ContainerInfo | None:
        """Start an existing container (idempotent); None when it is gone."""

    async def stop(self, ref: str, *, timeout: float = 5) -> None:
        """Stop a container (SIGTERM, then SIGKILL after `timeout`); gone counts as done."""

    async def remove_volume(self, name: str) -> bool:
        """Delete a named volume; True when one was deleted, False when there
        was none (a volume already gone counts as done)."""

    async def image_exists(self, image: str) -> bool:
        """Whether `image` is present locally (it is never pulled). Checked
        before a respawn replaces a daemon, so a bad image keeps the old one."""

    def events(
        self, labels: dict[str, str], *, since: float | None = None
    ) -> AsyncGenerator[RuntimeEvent, None]:
        """Container events for containers carrying `labels`, as they happen
        (and, with `since`, from that epoch time on, so a reconcile followed
        by a subscription misses nothing).

        The iterator ends when the engine connection drops; the caller
        re-subscribes (and reconciles, since events may have been missed).
        Wrap it in `contextlib.aclosing` to release the stream early.
        """

    # -- interactive access (called by the attach route) ------------------------

    async def attach(self, ref: str) -> Attachment:
        """Attach to a running container's stdin, stdout and stderr.

        Output written from now on is delivered (no history: see `logs`).
        Called once per container by the attach hub, whose session all
        clients of that container share. Raises `NotFound` when the
        container does not exist or is not running.
        """

    def logs(
        self, ref: str, *, tail: int | None = None, follow: bool = False
    ) -> AsyncGenerator[OutputChunk, None]:
        """A container's recorded output, oldest first, stdout and stderr apart.

        `tail` keeps only the last lines (None: everything); with `follow`
        the iterator goes on with new output until the container stops.
        Called by the attach hub to replay recent output and by
        `GET /daemon/v1/logs/{name}`. Raises `NotFound`
        when the container does not exist.
        """

    # -- exec (operations) ------------------------------------------------------

    async def exec(self, ref: str, cmd: Sequence[str], *, timeout: float, limit: int) -> ExecResult:
        """Run `cmd` in a running container (its own user, never privileged).

        Called by the daemon exec routes. Waits at most `timeout` seconds
        (then `timed_out`, `exit_code` None) and keeps at most `limit` bytes
        of each stream (then `truncated`). A command still running when it
        is given up on is killed where the runtime can (then `killed`).
        Raises `NotFound` when the container does not exist and `Conflict`
        when it is not running.
        """

    def run(
        self, spec: RunSpec, *, prepared: str | None = None
    ) -> AbstractAsyncContextManager[RunResult]:
        """Run a one-shot container to its end; the context gives what it
        printed, and the container is removed when the context exits.

        Called by minion spawns. The container has the limits of `spec` (no
        swap beyond memory, no network unless `spec.network`, all
        capabilities dropped, no-new-privileges, non-root user, an init,
        read-only root, a size-capped tmpfs workdir and /tmp). The files are
        copied in through the engine API while the container waits, then the
        run's command starts: `spec.timeout` counts from there (then it is
        killed, keeping the partial output). stdout and stderr are read
        apart; the output file is opened as `RunResult.output_stream`, to
        read before the context exits. The container is removed whatever
        happened, cancellation included.

        `prepared` is a container made by `prepare_run` for an equal spec
        (files, labels and output file aside): then only the copy-in and the
        run itself are left. A prepared container that is no longer waiting
        is removed and a new one made (`RunResult.pooled` False).

        Raises `ImageNotFound` when the image is not present locally (it is
        never pulled) and `RuntimeUnavailable` when the engine fails.
        Several runs may proceed concurrently.
        """

    async def run_once(self, spec: RunSpec, *, prepared: str | None = None) -> RunResult:
        """`run`, with the output file read into `RunResult.output`."""

    async def prepare_run(self, spec: RunSpec) -> str:
        """Create and start a container for runs like `spec` (its files and
        output file are ignored), waiting for its run; its id. Called by the
        warm pool; the container carries `spec.labels`. Raises like `run`."""

    async def close(self) -> None:
        """Release the engine connection; called once at shutdown."""
