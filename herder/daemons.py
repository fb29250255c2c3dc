"""Daemons: long-lived containers with ports and a data volume, metered while they run.

`DaemonService` is where a daemon is spawned, listed and killed; the routes
only parse the request and call it. Containers are found by their labels
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import appkeys
from .errors import BadRequest, ImageNotFound, NoCredits, NotFound
from .inputs import parse_json, read_form
from .keyedlocks import KeyedLocks
from .ledger import Ledger
from .metrics import Metrics
from .runtime import ContainerInfo, Runtime
from .runtime.base import (
    LABEL_GROUP,
    LABEL_INSTANCE,
    LABEL_JTI,
    LABEL_KIND,
    LABEL_MANAGED,
    LABEL_NAME,
    LABEL_SUBJECT,
    ServiceSpec,
)
from .settings import Settings
from .tokens import Claims, require_claims

log = logging.getLogger("herder.daemons")

KIND = "daemon"
MAX_PORTS = 16
MAX_FILES = 256
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
# A container name is `<name>-<jti>`; kill accepts either.
CONTAINER_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}-[A-Za-z0-9_.-]{1,128}")
# Names that would mount the data volume over the image's system directories.
RESERVED_NAMES = frozenset(
    "bin boot dev etc home lib lib32 lib64 libx32 media minion mnt opt proc root run "
    "sbin srv sys tmp usr var".split()
)
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
RESERVED_FIELDS = frozenset({"name", "image", "ports", "group"})
PORTS_EXPECTED = 'ports must be a JSON list of port numbers, e.g. [80, "8080"]'


# -- request validation -------------------------------------------------------


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


def parse_ports(raw: str | None) -> tuple[int, ...]:
    """`[80, 8080]` or `["80","8080"]` (JSON); absent, empty or `[]`: no ports."""
    if raw is None or not raw.strip():
        return ()
    value = parse_json(raw, PORTS_EXPECTED)
    if not isinstance(value, list):
        raise BadRequest(PORTS_EXPECTED)
    if len(value) > MAX_PORTS:
        raise BadRequest(f"at most {MAX_PORTS} ports")
    ports: list[int] = []
    for item in value:
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


async def parse_spawn(request: web.Request) -> SpawnRequest:
    """Read the spawn form (urlencoded or multipart): name, image, ports, files."""
    if not request.can_read_body:
        raise BadRequest("expected a form with name and image")
    max_bytes = request.app[appkeys.SETTINGS].max_body_bytes
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
    )


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

    def to_json(self) -> dict[str, Any]:
        return {"Name": self.name, "Address": self.address, "Ports": self.ports}


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

    def _labels(self, subject: str) -> dict[str, str]:
        return {
            LABEL_MANAGED: "1",
            LABEL_KIND: KIND,
            LABEL_INSTANCE: self.instance,
            LABEL_SUBJECT: subject,
        }

    async def _owned(
        self, subject: str, name: str, *, or_container_name: bool = False
    ) -> list[ContainerInfo]:
        """The subject's daemons whose user name (or container name) is exactly `name`."""
        found = await self.runtime.list(self._labels(subject))
        return [
            c
            for c in found
            if c.labels.get(LABEL_NAME) == name or (or_container_name and c.name == name)
        ]

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
        async with self._locks.hold((claims.sub, request.name)):
            for old in await self._owned(claims.sub, request.name):
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
        return Spawned(name=info.name, address=info.address, ports=ports)

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
        found = await self._owned(subject, name, or_container_name=True)
        if not found:
            # A daemon killed earlier without `wipe` left its data: wiping it
            # needs no container.
            if wipe and NAME_PATTERN.fullmatch(name) and name not in RESERVED_NAMES:
                async with self._locks.hold((subject, name)):
                    if not await self._owned(subject, name) and await self.runtime.remove_volume(
                        volume_name(self.instance, subject, name)
                    ):
                        log.info("data of daemon %s wiped for %s", name, subject)
                        return {"Killed": [], "Wiped": True}
            raise NotFound(f"no daemon named {name!r}")
        user_names = {c.labels.get(LABEL_NAME, "") for c in found}
        killed: list[str] = []
        for user_name in sorted(user_names):
            async with self._locks.hold((subject, user_name)):
                for container in await self._owned(subject, user_name):
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
                for container in await self._owned(subject, user_name):
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
    return {
        "Id": c.id,
        "Names": raw.get("Names") or [f"/{c.name}"],
        "Image": c.image,
        "State": c.state,
        "Status": c.status,
        "Ports": raw.get("Ports") or [],
        "Created": raw.get("Created", c.created),
        "Labels": c.labels,
    }


# -- routes -------------------------------------------------------------------

routes = web.RouteTableDef()


@routes.post("/daemon/v1/spawn")
async def spawn(request: web.Request) -> web.Response:
    claims = await require_claims(request)
    spawn_request = await parse_spawn(request)
    spawned = await request.app[appkeys.DAEMONS].spawn(claims, spawn_request)
    return web.json_response(spawned.to_json())


@routes.get("/daemon/v1/ls")
async def ls(request: web.Request) -> web.Response:
    claims = await require_claims(request)
    group = request.query.get("group")
    group = check_group(group) if group is not None else None
    return web.json_response(await request.app[appkeys.DAEMONS].list(claims.sub, group))


def _flag(values: Iterable[str]) -> bool:
    return any(v.strip().lower() in ("1", "true", "yes", "on") for v in values)


@routes.route("GET", "/daemon/v1/kill/{name}")
@routes.route("POST", "/daemon/v1/kill/{name}")
@routes.route("DELETE", "/daemon/v1/kill/{name}")
async def kill(request: web.Request) -> web.Response:
    claims = await require_claims(request)
    wipe = _flag(request.query.getall("wipe", []))
    result = await request.app[appkeys.DAEMONS].kill(
        claims.sub, request.match_info["name"], wipe=wipe
    )
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
    wipe = _flag(request.query.getall("wipe", []))
    result = await request.app[appkeys.DAEMONS].kill_group(
        claims.sub, check_group(group), wipe=wipe
    )
    return web.json_response(result)
