"""Daemons: long-lived containers with ports and a data volume, metered while they run.

`DaemonService` is where a daemon is spawned, listed, killed, run a command
in and read the output of; the routes (`herder.api.daemons`) only parse the
request and call it. Containers are found by their labels
(instance, kind, subject) and then by an exact comparison of the user name
or container name, never by Docker's `name` filter (an unanchored regular
expression: `a.b` would also match another subject's `axb`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import (
    BadRequest,
    Conflict,
    ImageNotFound,
    NoCredits,
    NotFound,
    ServiceUnavailable,
)
from .keyedlocks import KeyedLocks
from .ledger import Ledger
from .ledger.lookup import RunningDaemon, find_running_daemon, find_running_daemons_named
from .metrics import Metrics
from .runtime import ContainerInfo, NodeInfo, Runtime
from .runtime.base import (
    LABEL_GROUP,
    LABEL_INSTANCE,
    LABEL_JTI,
    LABEL_KIND,
    LABEL_MANAGED,
    LABEL_NAME,
    LABEL_SUBJECT,
    OnAnotherNode,
    OutputChunk,
    ServiceSpec,
)
from .settings import Settings
from .tokens import Claims

# (where, subject, container name, cmd, timeout) -> the exec result there.
RemoteExec = Callable[[OnAnotherNode, str, str, list[str], float], Awaitable[dict[str, Any]]]

log = logging.getLogger("herder.daemons")

KIND = "daemon"
MAX_PORTS = 16
MAX_FILES = 256  # files a spawn may put in the data volume
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
# A container name is `<name>-<jti>`; kill accepts either.
CONTAINER_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}-[A-Za-z0-9_.-]{1,128}")
# Names that would mount the data volume over the image's system directories.
RESERVED_NAMES = frozenset(
    "bin boot dev etc home lib lib32 lib64 libx32 media minion mnt opt proc root run "
    "sbin srv sys tmp usr var".split()
)
# What `exec` keeps of each stream (the command is killed past it, see
# `Runtime.exec`).
EXEC_OUTPUT_LIMIT = 64 << 10
FILE_COMPONENT = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# The first part is a registry only with a '.' or a port, or as `localhost`
# (as the engine reads it): `UPPER/case` is an upper-case repository, refused.
_IMAGE_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_IMAGE_DOMAIN = (
    rf"(?:(?:localhost|{_IMAGE_LABEL}(?:\.{_IMAGE_LABEL})+)(?::[0-9]{{1,5}})?"
    rf"|{_IMAGE_LABEL}:[0-9]{{1,5}})/"
)
IMAGE_PATTERN = re.compile(
    rf"(?:{_IMAGE_DOMAIN})?{_IMAGE_COMPONENT}(?:/{_IMAGE_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)
# GPUs one daemon may reserve.
MAX_GPUS = 64


# -- validation (pure) --------------------------------------------------------


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise BadRequest(
            "name must be 1 to 63 characters of a-z, 0-9, '_', '.', '-', starting with a "
            "letter or digit, without '..'"
        )
    if name in RESERVED_NAMES:
        raise BadRequest(f"name {name!r} is reserved (its data volume is mounted at /{name})")
    return name


def check_group(group: str) -> str:
    """A group (as P2PRC has them) is named like a daemon."""
    if not NAME_PATTERN.fullmatch(group) or ".." in group:
        raise BadRequest(
            "group must be 1 to 63 characters of a-z, 0-9, '_', '.', '-', starting with a "
            "letter or digit, without '..'"
        )
    return group


def check_image(image: str) -> str:
    if not image or len(image) > 512 or not IMAGE_PATTERN.fullmatch(image):
        raise BadRequest(f"image {image[:100]!r} is not a valid image reference")
    return image


def check_ports(items: list[Any]) -> tuple[int, ...]:
    """Container ports as a spawn gives them (numbers or numeric strings):
    at most `MAX_PORTS`, each 1 to 65535, none twice."""
    if len(items) > MAX_PORTS:
        raise BadRequest(f"at most {MAX_PORTS} ports")
    ports: list[int] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise BadRequest(f"port {item!r} is not a number")
        if isinstance(item, str):
            if not re.fullmatch(r"[0-9]{1,5}", item.strip()):
                raise BadRequest(f"port {item!r} is not a number")
            item = int(item)
        if not 1 <= item <= 65535:
            raise BadRequest(f"port {item} is out of range (1 to 65535)")
        if item in ports:
            raise BadRequest(f"port {item} is given twice")
        ports.append(item)
    return tuple(ports)


def check_file_name(name: str) -> str:
    parts = name.split("/")
    if (
        len(name) > 255
        or len(parts) > 8
        or any(not FILE_COMPONENT.fullmatch(p) or p in (".", "..") for p in parts)
    ):
        raise BadRequest(
            f"bad file name {name[:100]!r}: use relative paths of letters, digits, '_', '.', '-'"
        )
    return name


@dataclass(frozen=True)
class SpawnRequest:
    name: str
    image: str
    ports: tuple[int, ...] = ()
    files: dict[str, bytes] = field(default_factory=dict)
    group: str | None = None
    node: str | None = None  # a node's hostname or id (placement)
    gpus: int = 0


def parse_gpus(raw: str | None) -> int:
    if raw is None or not raw.strip():
        return 0
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_GPUS:
        raise BadRequest(f"gpus must be a whole number from 0 to {MAX_GPUS}")
    return int(text)


def check_node(raw: str | None) -> str | None:
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}", text):
        raise BadRequest(f"unknown node {text[:100]!r}")
    return text


# -- the service --------------------------------------------------------------


def volume_name(instance: str, subject: str, name: str) -> str:
    """The daemon's data volume: the same for a subject and name across respawns."""
    digest = hashlib.sha256(subject.encode()).hexdigest()[:16]
    return f"herder-{instance}-{digest}-{name}"


@dataclass(frozen=True)
class Spawned:
    name: str
    address: str
    ports: dict[str, int]
    node: NodeInfo | None = None

    def to_json(self) -> dict[str, Any]:
        reply: dict[str, Any] = {"Name": self.name, "Address": self.address, "Ports": self.ports}
        if self.node is not None:
            reply["Node"] = self.node.reference()
        return reply


class DaemonService:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        runtime: Runtime,
        instance: str,
        metrics: Metrics | None = None,
    ):
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.ledger = ledger
        self.runtime = runtime
        self.instance = instance
        self._locks = KeyedLocks()  # one per (subject, name), dropped when unused
        # Called with the container name of each daemon removed (the proxy
        # forgets its address at once: Docker may hand it to another daemon).
        self.on_removed: list[Callable[[str], None]] = []
        # Exec in a daemon on another node (the replica there, `herder.peers`).
        self.remote_exec: RemoteExec | None = None

    def _labels(self, subject: str) -> dict[str, str]:
        return {
            LABEL_MANAGED: "1",
            LABEL_KIND: KIND,
            LABEL_INSTANCE: self.instance,
            LABEL_SUBJECT: subject,
        }

    async def owned(
        self, subject: str, *, name: str | None = None, group: str | None = None
    ) -> list[ContainerInfo]:
        """The subject's daemons on this herder (any state): of `group` when
        given, and called `name` (user or container name) when given."""
        labels = self._labels(subject)
        if group is not None:
            labels[LABEL_GROUP] = group
        found = await self.runtime.list(labels)
        if name is not None:
            found = [c for c in found if name in (c.labels.get(LABEL_NAME), c.name)]
        return found

    async def find_owned(self, subject: str, name: str) -> ContainerInfo:
        """The subject's daemon called `name` (any state); `NotFound` for
        unknown names and others' daemons."""
        found = await self.owned(subject, name=name)
        if not found:
            raise NotFound(f"no daemon named {name!r}")
        return found[0]

    async def find_running(self, subject: str | None, name: str) -> RunningDaemon:
        """The running daemon `name` designates, from the registry.

        `name` is a container name, or (given the caller's `subject`) the plain
        name of exactly one of the caller's running daemons. When `subject` is
        given, another subject's daemon is not found. Raises `NotFound`.
        """
        daemon = await self.running(name)
        if daemon is None and subject is not None:
            named = await find_running_daemons_named(self.ledger, self.instance, subject, name)
            if len(named) == 1:
                daemon = named[0]
        if daemon is None or (subject is not None and daemon.subject != subject):
            raise NotFound(f"no running daemon named {name!r}")
        return daemon

    async def running(self, container_name: str) -> RunningDaemon | None:
        """The registry's running daemon of that container name, whoever owns it."""
        return await find_running_daemon(self.ledger, self.instance, container_name)

    async def _named(self, subject: str, user_name: str) -> list[ContainerInfo]:
        """The subject's daemons whose user name is exactly `user_name`."""
        found = await self.runtime.list(self._labels(subject))
        return [c for c in found if c.labels.get(LABEL_NAME) == user_name]

    async def spawn(self, claims: Claims, request: SpawnRequest) -> Spawned:
        """Start the daemon `request.name` for the caller; an existing one of that
        name is replaced (its data volume is kept)."""
        if (await self.ledger.balance(claims.sub)).remaining <= 0:
            raise NoCredits("no credits left: daemons cannot be spawned")
        try:
            spawned = await self._spawn(claims, request)
        except Exception:
            self.metrics.spawned(KIND, ok=False)
            raise
        self.metrics.spawned(KIND, ok=True)
        return spawned

    async def _spawn(self, claims: Claims, request: SpawnRequest) -> Spawned:
        if not await self.runtime.image_exists(request.image):
            raise ImageNotFound(f"image {request.image!r} is not available on this herder")
        node = await self._node(request.node) if request.node else None
        if request.gpus:
            offered = max((n.gpus for n in await self.runtime.nodes()), default=0)
            if offered < request.gpus:
                raise BadRequest(
                    "no node of this herder offers GPUs"
                    if offered == 0
                    else f"no node offers {request.gpus} GPUs (at most {offered})"
                )
        async with self._locks.hold((claims.sub, request.name)):
            for old in await self._named(claims.sub, request.name):
                # The data volume is on the old one's node: a respawn stays there.
                if node is None and old.node is not None:
                    node = old.node
                await self._remove(old)
            labels = self._labels(claims.sub) | {LABEL_JTI: claims.jti, LABEL_NAME: request.name}
            if request.group:
                labels[LABEL_GROUP] = request.group
            settings = self.settings
            spec = ServiceSpec(
                name=f"{request.name}-{claims.jti}",
                image=request.image,
                labels=labels,
                ports=request.ports,
                bind_address=settings.daemon_bind_address,
                volume=volume_name(self.instance, claims.sub, request.name),
                mounts=(f"/{request.name}", "/minion"),
                files=request.files,
                files_dir="/minion",
                memory_bytes=settings.daemon_memory_mb << 20,
                nano_cpus=int(settings.daemon_cpus * 1e9),
                pids=settings.daemon_pids,
                restart="unless-stopped",
                open_stdin=True,
                network=settings.network,  # no traffic to other daemons or golems
                node=node.id if node is not None else None,
                gpus=request.gpus,
                # No NET_RAW: no layer-2 tricks (ARP scans, spoofing) on the bridge.
                cap_drop_all=True,
                cap_add=settings.daemon_capabilities,
            )
            info = await self.runtime.run_service(spec)
            ports = {str(p): info.ports.get(str(p), 0) for p in request.ports}
            try:
                await self.ledger.register_workload(
                    instance=self.instance,
                    kind=KIND,
                    subject=claims.sub,
                    jti=claims.jti,
                    name=request.name,
                    container_name=info.name,
                    container_id=info.id,
                    image=request.image,
                    address=info.address,
                    ports=ports,
                    metered=True,
                    group_name=request.group,
                )
            except BaseException:
                # Never leave a daemon running that nobody meters.
                await asyncio.shield(self.runtime.remove(info.id))
                raise
        log.info("daemon %s spawned for %s", info.name, claims.sub)
        return Spawned(name=info.name, address=info.address, ports=ports, node=info.node)

    async def _node(self, ref: str) -> NodeInfo:
        """The node a spawn names, by id or hostname; 400 naming it when unknown."""
        for candidate in await self.runtime.nodes():
            if ref in (candidate.id, candidate.hostname):
                return candidate
        raise BadRequest(f"unknown node {ref!r}")

    # -- commands and output -----------------------------------------------------

    async def exec(self, subject: str, name: str, cmd: list[str], timeout: float) -> dict[str, Any]:
        """Run `cmd` in the subject's daemon `name` (`NotFound` if there is none);
        on another node, through its replica (503 when that one cannot be reached)."""
        daemon = await self.find_owned(subject, name)
        return await self._exec_in(daemon, cmd, timeout, subject=subject, strict=True)

    async def exec_here(
        self, subject: str, name: str, cmd: list[str], timeout: float
    ) -> dict[str, Any]:
        """`exec` on this node's engine only (what a peer asks of this replica)."""
        return await self._exec_in(await self.find_owned(subject, name), cmd, timeout)

    async def exec_group(
        self, subject: str, group: str, cmd: list[str], timeout: float
    ) -> list[dict[str, Any]]:
        """Run `cmd` in every daemon of the subject's `group` at once, by container name."""
        daemons = await self.owned(subject, group=group)
        results = await asyncio.gather(
            *(self._exec_in(d, cmd, timeout, subject=subject) for d in daemons)
        )
        return sorted(results, key=lambda r: str(r["Name"]))

    async def _exec_in(
        self,
        daemon: ContainerInfo,
        cmd: list[str],
        timeout: float,
        *,
        subject: str | None = None,
        strict: bool = False,
    ) -> dict[str, Any]:
        """Run `cmd` in one daemon; a stopped daemon is reported, not raised.
        Given the `subject`, a daemon on another node runs it through the
        `remote_exec` hook (the replica there); an unreachable replica is
        raised when `strict`, else reported."""
        entry: dict[str, Any] = {
            "Name": daemon.name,
            "Daemon": daemon.labels.get(LABEL_NAME, daemon.name),
        }
        if daemon.state != "running":
            return {**entry, "ExitCode": None, "StdOut": "", "StdErr": "", "Error": "not running"}
        try:
            result = await self.runtime.exec(
                daemon.id, cmd, timeout=timeout, limit=EXEC_OUTPUT_LIMIT
            )
        except (NotFound, Conflict) as exc:
            if isinstance(exc, OnAnotherNode) and subject and self.remote_exec is not None:
                try:
                    return await self.remote_exec(exc, subject, daemon.name, cmd, timeout)
                except ServiceUnavailable as unreachable:
                    if strict:
                        raise
                    error = unreachable.message
            else:
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

    async def logs(
        self, subject: str, name: str, *, tail: int | None, follow: bool
    ) -> AsyncGenerator[OutputChunk, None]:
        """The output of the subject's daemon `name` (`NotFound` if there is
        none): the last `tail` lines (all when None), then, with `follow`,
        new output until the daemon stops. Nothing is read from the engine
        until the iterator is."""
        daemon = await self.find_owned(subject, name)
        return self.runtime.logs(daemon.id, tail=tail, follow=follow)

    # -- listing and killing -----------------------------------------------------

    async def list(self, subject: str, group: str | None = None) -> list[dict[str, Any]]:
        """The subject's daemons (of `group`, when given), in Docker's list format."""
        labels = self._labels(subject)
        if group is not None:
            labels[LABEL_GROUP] = group
        found = await self.runtime.list(labels)
        return [_listed(c) for c in sorted(found, key=lambda c: c.name)]

    async def kill(self, subject: str, name: str, *, wipe: bool = False) -> dict[str, Any]:
        """Stop and remove the subject's daemon `name` (user or container name);
        with `wipe`, delete its data volume too. 404 for anything not theirs."""
        if not (NAME_PATTERN.fullmatch(name) or CONTAINER_NAME_PATTERN.fullmatch(name)):
            raise NotFound(f"no daemon named {name[:100]!r}")
        found = await self.owned(subject, name=name)
        if not found:
            # A daemon killed earlier without `wipe` left its data: wiping it
            # needs no container.
            if wipe and NAME_PATTERN.fullmatch(name) and name not in RESERVED_NAMES:
                async with self._locks.hold((subject, name)):
                    if not await self._named(subject, name) and await self.runtime.remove_volume(
                        volume_name(self.instance, subject, name)
                    ):
                        log.info("data of daemon %s wiped for %s", name, subject)
                        return {"Killed": [], "Wiped": True}
            raise NotFound(f"no daemon named {name!r}")
        user_names = {c.labels.get(LABEL_NAME, "") for c in found}
        killed: list[str] = []
        for user_name in sorted(user_names):
            async with self._locks.hold((subject, user_name)):
                for container in await self._named(subject, user_name):
                    await self._remove(container)
                    killed.append(container.name)
                if wipe and NAME_PATTERN.fullmatch(user_name):
                    await self.runtime.remove_volume(volume_name(self.instance, subject, user_name))
        log.info("daemons %s killed for %s (wipe=%s)", killed, subject, wipe)
        return {"Killed": killed, "Wiped": wipe}

    async def kill_group(self, subject: str, group: str, *, wipe: bool = False) -> dict[str, Any]:
        """Kill every daemon of the subject's `group` (none: an empty list, not a 404)."""
        members = await self.runtime.list(self._labels(subject) | {LABEL_GROUP: group})
        killed: list[str] = []
        for user_name in sorted({c.labels.get(LABEL_NAME, "") for c in members}):
            async with self._locks.hold((subject, user_name)):
                for container in await self._named(subject, user_name):
                    if container.labels.get(LABEL_GROUP) != group:
                        continue  # respawned meanwhile into another group
                    await self._remove(container)
                    killed.append(container.name)
                if wipe and NAME_PATTERN.fullmatch(user_name):
                    await self.runtime.remove_volume(volume_name(self.instance, subject, user_name))
        log.info("group %s: daemons %s killed for %s (wipe=%s)", group, killed, subject, wipe)
        return {"Killed": killed, "Wiped": wipe, "Group": group}

    async def _remove(self, container: ContainerInfo) -> None:
        self.metrics.lifetime(KIND, container.created)
        await self.runtime.remove(container.id)
        for hook in self.on_removed:
            hook(container.name)
        await self.ledger.close_workload(
            self.instance, container.id, at=time.time(), rate=self.settings.credit_rate
        )


def _listed(c: ContainerInfo) -> dict[str, Any]:
    raw = c.raw
    listed = {
        "Id": c.id,
        "Names": raw.get("Names") or [f"/{c.name}"],
        "Image": c.image,
        "State": c.state,
        "Status": c.status,
        "Ports": raw.get("Ports")
        or [{"PrivatePort": int(k), "PublicPort": v, "Type": "tcp"} for k, v in c.ports.items()],
        "Created": raw.get("Created", c.created),
        "Labels": c.labels,
    }
    if c.node is not None:
        listed["Node"] = c.node.reference()
    return listed
