"""The Docker implementation of the Runtime protocol, on aiodocker."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer

from ..errors import BadRequest, Conflict, ImageNotFound, NotFound
from . import proctree
from .base import (
    LABEL_MANAGED,
    Attachment,
    ContainerInfo,
    ExecResult,
    NodeInfo,
    OutputChunk,
    RunResult,
    RunSpec,
    RuntimeEvent,
    RuntimeUnavailable,
    ServiceSpec,
)
from .runs import OneShotRuns
from .tarball import files_tar

log = logging.getLogger("herder.runtime")

# Seconds `close` waits for container removals still under way.
_CLEANUP_GRACE = 15.0
# The herder network: a bridge whose containers cannot reach each other.
_NETWORK_OPTIONS = {"com.docker.network.bridge.enable_icc": "false"}
_NETWORK_LABELS = {LABEL_MANAGED: "1"}
# Networks as the engine lists them (`list` is a method name in the class).
_Networks = list[dict[str, Any]]


class DockerRuntime:
    """Three engine clients with connection pools of their own: `docker` for
    short calls (list, inspect, spawn, kill, ping, exec), `streams` for calls
    that stay open as long as a client or the herder wants (log follows,
    attach sessions, the event streams) and `runs` for the attach stream and
    wait of one-shot runs. However many streams or minions are open, short
    calls never wait for a connection behind them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.docker = aiodocker.Docker(url=url)
        self.streams = aiodocker.Docker(url=url)
        # A one-shot run holds two connections while it runs (its attach
        # stream and its wait): on a client of their own, many minions at
        # once slow neither short calls nor streams.
        self.runs = aiodocker.Docker(url=url)
        self._networks: set[str] = set()  # networks known to exist
        self._network_lock = asyncio.Lock()
        # One-shot runs under way and removals of their containers that
        # outlive a cancelled request: `close` waits for them.
        self._cleanups: set[asyncio.Future[None]] = set()
        self.oneshot = OneShotRuns(self)

    async def close(self) -> None:
        # Removals under way finish first: with the clients closed they could not.
        # (A run that ends starts its removal then, so look again until none is left.)
        deadline = time.monotonic() + _CLEANUP_GRACE
        while self._cleanups and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(set(self._cleanups), timeout=left)
        await self.docker.close()
        await self.streams.close()
        await self.runs.close()

    def _cleanup(self, work: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        """Run `work` to its end even if its caller is cancelled; `close` waits for it."""
        return self._tracked(asyncio.ensure_future(work))

    def _tracked(self, future: asyncio.Future[None]) -> asyncio.Future[None]:
        self._cleanups.add(future)
        future.add_done_callback(self._cleanups.discard)
        return future

    async def ping(self) -> None:
        try:
            await self.docker._query_json("_ping", method="GET", versioned_api=False)
        except json.JSONDecodeError:
            return  # _ping answers the plain text "OK"
        except (aiodocker.DockerError, OSError, Exception) as exc:
            raise RuntimeUnavailable(f"Docker Engine not answering at {self.url}") from exc

    async def version(self) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await self.docker.version()
            return result
        except (aiodocker.DockerError, OSError) as exc:
            raise RuntimeUnavailable(f"Docker Engine not answering at {self.url}") from exc

    async def nodes(self) -> list[NodeInfo]:
        """The engine's host as the one node."""
        try:
            info = await self.docker.system.info()
        except (aiodocker.DockerError, OSError) as exc:
            raise RuntimeUnavailable(f"Docker Engine not answering at {self.url}") from exc
        return [
            NodeInfo(
                id=str(info.get("ID", "")),
                hostname=str(info.get("Name", "")),
                address="",
                cpus=float(info.get("NCPU") or 0),
                memory_bytes=int(info.get("MemTotal") or 0),
                leader=True,
            )
        ]

    async def list(self, labels: dict[str, str], *, all: bool = True) -> list[ContainerInfo]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        try:
            items = await self.docker.containers.list(all=all, filters=json.dumps(filters))
        except (aiodocker.DockerError, OSError) as exc:
            raise RuntimeUnavailable("Docker Engine not answering") from exc
        result = []
        for container in items:
            info = _from_list_entry(container._container)
            # Label filters are exact, but check anyway: a filter bug must not
            # show one subject another's containers.
            if _has_labels(info, labels):
                result.append(info)
        return result

    async def inspect(self, ref: str) -> ContainerInfo | None:
        try:
            container = await self.docker.containers.get(ref)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            raise RuntimeUnavailable("Docker Engine error") from exc
        except OSError as exc:
            raise RuntimeUnavailable("Docker Engine not answering") from exc
        data = container._container
        info = _from_inspect(data)
        # `get` also matches id prefixes; only an exact id or name counts.
        if ref not in (info.id, info.name):
            return None
        return info

    async def remove(self, ref: str) -> None:
        try:
            container = self.docker.containers.container(ref)
            await container.delete(force=True, v=True)
        except aiodocker.DockerError as exc:
            if exc.status in (404, 409):
                return
            raise RuntimeUnavailable("Docker Engine error") from exc

    async def image_exists(self, image: str) -> bool:
        try:
            await self.docker.images.inspect(image)
        except aiodocker.DockerError as exc:
            if exc.status in (400, 404):  # 400: a reference the engine cannot parse
                return False
            raise RuntimeUnavailable("Docker Engine error") from exc
        return True

    # -- the herder network ------------------------------------------------------

    async def ensure_network(self, name: str) -> None:
        if name in self._networks:
            return
        async with self._network_lock:
            if name in self._networks:
                return
            try:
                found = await self._networks_named(name)
                if not found:
                    await self._create_network(name)
                    found = await self._networks_named(name)
                if len(found) > 1:
                    found = await self._settle_networks(found)
            except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
                raise RuntimeUnavailable(f"Docker Engine refused the network {name!r}") from exc
            options = (found[0].get("Options") or {}) if found else _NETWORK_OPTIONS
            if options.get("com.docker.network.bridge.enable_icc") != "false":
                log.warning(
                    "network %s lets its containers reach each other (made by hand?): "
                    "daemons and golems are not isolated from one another",
                    name,
                )
            self._networks.add(name)

    async def _networks_named(self, name: str) -> _Networks:
        # The name filter matches parts of names too: keep exact matches.
        listed = await self.docker.networks.list(filters={"name": name})
        return [n for n in listed if n.get("Name") == name]

    async def _create_network(self, name: str) -> None:
        config = {
            "Name": name,
            "CheckDuplicate": True,
            "Driver": "bridge",
            "Options": _NETWORK_OPTIONS,
            "Labels": _NETWORK_LABELS,
        }
        try:
            await self.docker.networks.create(config)
            log.info("network %s created", name)
        except aiodocker.DockerError as exc:
            if exc.status != 409:  # made meanwhile by another herder: done
                raise

    async def _settle_networks(self, found: _Networks) -> _Networks:
        """Herders racing to make a network can make one each (the engine's
        duplicate check is not atomic), and a name that matches two networks
        cannot be used. Every herder keeps the same one, the oldest, and
        removes the others it may: unused ones that a herder made."""
        found = sorted(found, key=lambda n: (_docker_time(n.get("Created", "")), n.get("Id", "")))
        for extra in found[1:]:
            if (extra.get("Labels") or {}).get(LABEL_MANAGED) != "1":
                continue
            try:
                await aiodocker.networks.DockerNetwork(self.docker, extra["Id"]).delete()
            except aiodocker.DockerError as exc:
                if exc.status not in (403, 404, 409):  # in use, or gone already
                    raise
        return found[:1]

    async def _start(self, container: DockerContainer, network: str | None) -> None:
        """Start a created container; the engine checks its network only now,
        so a network removed (or doubled) since `ensure_network` is made good
        and the start tried once more."""
        try:
            await container.start()
        except aiodocker.DockerError as exc:
            if network is None or "network" not in str(exc.message).lower():
                raise
            log.warning("network %s is gone or ambiguous (%s): making it again", network, exc)
            self._networks.discard(network)
            await self.ensure_network(network)
            await container.start()

    # -- long-lived services ---------------------------------------------------

    async def run_service(self, spec: ServiceSpec) -> ContainerInfo:
        if not await self.image_exists(spec.image):
            raise ImageNotFound(f"image {spec.image!r} is not available on this herder")
        if spec.network:
            await self.ensure_network(spec.network)
        new_volume = False
        if spec.volume:
            new_volume = await self._ensure_volume(spec.volume, spec.labels)
        try:
            try:
                container = await self.docker.containers.create(
                    _service_config(spec), name=spec.name
                )
            except aiodocker.DockerError as exc:
                if exc.status == 409:
                    raise Conflict(f"a container named {spec.name!r} exists") from None
                if exc.status == 404:
                    raise ImageNotFound(
                        f"image {spec.image!r} is not available on this herder"
                    ) from None
                raise _refused(exc, spec.image, "create the container") from None
            try:
                if spec.files:
                    data = await asyncio.to_thread(files_tar, spec.files)
                    await container.put_archive(spec.files_dir, data)
                try:
                    await self._start(container, spec.network)
                except aiodocker.DockerError as exc:
                    raise _refused(exc, spec.image, "start the container") from None
                info = await self.inspect(container.id)
            except BaseException:
                await asyncio.shield(self.remove(container.id))
                raise
        except BadRequest:
            # The image cannot run as a daemon: a data volume made for it goes too.
            if new_volume and spec.volume:
                await asyncio.shield(self.remove_volume(spec.volume))
            raise
        if info is None:
            raise RuntimeUnavailable("the container vanished right after start")
        return info

    async def _ensure_volume(self, name: str, labels: dict[str, str]) -> bool:
        """Make the named volume if missing; True when it was made now."""
        try:
            try:
                await self.docker.volumes.get(name)
                return False
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise
            await self.docker.volumes.create({"Name": name, "Labels": labels})
            return True
        except aiodocker.DockerError as exc:
            raise RuntimeUnavailable("Docker Engine refused to create the volume") from exc

    async def start(self, ref: str) -> ContainerInfo | None:
        try:
            await self.docker.containers.container(ref).start()
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            if exc.status != 304:  # already running
                raise RuntimeUnavailable("Docker Engine refused to start the container") from exc
        return await self.inspect(ref)

    async def stop(self, ref: str, *, timeout: float = 5) -> None:
        try:
            await self.docker.containers.container(ref).stop(t=int(timeout))
        except aiodocker.DockerError as exc:
            if exc.status in (304, 404):
                return
            raise RuntimeUnavailable("Docker Engine refused to stop the container") from exc

    async def remove_volume(self, name: str) -> bool:
        for attempt in range(20):
            try:
                await self.docker.volumes.get(name)
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    return False
                raise RuntimeUnavailable("Docker Engine error") from exc
            try:
                await aiodocker.volumes.DockerVolume(self.docker, name).delete()
                return True
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    return False
                if exc.status != 409 or attempt == 19:  # in use: a removal is finishing
                    raise RuntimeUnavailable("Docker Engine refused to delete the volume") from exc
                await asyncio.sleep(0.1)
        return False

    async def events(
        self, labels: dict[str, str], *, since: float | None = None
    ) -> AsyncGenerator[RuntimeEvent, None]:
        filters = {"type": ["container"], "label": [f"{k}={v}" for k, v in labels.items()]}
        params = {"filters": json.dumps(filters)}
        if since is not None:
            params["since"] = f"{since:.6f}"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=10)
        try:
            async with self.streams._query(
                "events", method="GET", params=params, timeout=timeout
            ) as response:
                try:
                    async for line in response.content:
                        if not line.strip():
                            continue
                        event = _event_from(json.loads(line))
                        if event is not None and _has_labels_raw(event.labels, labels):
                            yield event
                finally:
                    response.close()  # aiodocker's _query leaves releasing to the caller
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
            raise RuntimeUnavailable("lost the Docker event stream") from exc

    # -- exec (operations) -------------------------------------------

    async def exec(self, ref: str, cmd: Sequence[str], *, timeout: float, limit: int) -> ExecResult:
        started = time.monotonic()
        try:
            container = self.docker.containers.container(ref)
            execution = await container.exec(list(cmd), stdout=True, stderr=True, stdin=False)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise NotFound("no such container") from None
            if exc.status == 409:
                raise Conflict("the container is not running") from None
            raise RuntimeUnavailable("Docker Engine refused the exec") from exc
        out, err = bytearray(), bytearray()
        truncated = timed_out = stopped_reading = False
        try:
            async with asyncio.timeout(timeout):
                async with execution.start(detach=False) as stream:
                    while (message := await stream.read_out()) is not None:
                        buffer = out if message.stream == 1 else err
                        room = limit - len(buffer)
                        if len(message.data) > room:
                            truncated = True
                        buffer += message.data[: max(0, room)]
                        if len(out) >= limit and len(err) >= limit:
                            stopped_reading = True  # both full
                            break
        except TimeoutError:
            timed_out = True
        except aiodocker.DockerError as exc:
            raise RuntimeUnavailable("Docker Engine refused the exec") from exc
        try:
            state = await execution.inspect()
        except aiodocker.DockerError as exc:
            raise RuntimeUnavailable("Docker Engine error") from exc
        exit_code: int | None = None
        killed = False
        if state.get("Running"):
            if timed_out or stopped_reading:
                killed = await asyncio.to_thread(
                    proctree.kill_tree, int(state.get("Pid") or 0), str(state.get("ContainerID"))
                )
        elif not timed_out and state.get("ExitCode") is not None:
            exit_code = int(state["ExitCode"])
        return ExecResult(
            exit_code=exit_code,
            stdout=bytes(out),
            stderr=bytes(err),
            timed_out=timed_out,
            truncated=truncated,
            seconds=round(time.monotonic() - started, 3),
            killed=killed,
        )

    # -- one-shot runs (herder.runtime.runs) -------------------------------------

    def run(
        self, spec: RunSpec, *, prepared: str | None = None
    ) -> AbstractAsyncContextManager[RunResult]:
        return self.oneshot.run(spec, prepared)

    async def run_once(self, spec: RunSpec, *, prepared: str | None = None) -> RunResult:
        return await self.oneshot.run_once(spec, prepared)

    async def prepare_run(self, spec: RunSpec) -> str:
        return await self.oneshot.prepare(spec)

    # -- interactive access ------------------------------------------------------

    async def attach(self, ref: str) -> Attachment:
        container = self.streams.containers.container(ref)
        stream = container.attach(stdin=True, stdout=True, stderr=True, logs=False)
        try:
            await stream.__aenter__()
        except aiodocker.DockerError as exc:
            if exc.status in (404, 409):
                raise NotFound("the daemon is not running") from None
            raise RuntimeUnavailable("Docker Engine refused to attach") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise RuntimeUnavailable("Docker Engine not answering") from exc
        return _DockerAttachment(stream)

    async def logs(
        self, ref: str, *, tail: int | None = None, follow: bool = False
    ) -> AsyncGenerator[OutputChunk, None]:
        info = await self.inspect(ref)
        if info is None:
            raise NotFound("the daemon does not exist")
        tty = bool((info.raw.get("Config") or {}).get("Tty"))
        params = {
            "stdout": "1",
            "stderr": "1",
            "follow": "1" if follow else "0",
            "tail": "all" if tail is None else str(max(tail, 0)),
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=10)
        client = self.streams if follow else self.docker  # a follow stays open
        try:
            async with client._query(
                f"containers/{info.id}/logs", method="GET", params=params, timeout=timeout
            ) as response:
                try:
                    if tty:
                        async for data in response.content.iter_any():
                            yield OutputChunk(1, data)
                    else:
                        async for chunk in _demultiplex(response.content):
                            yield chunk
                finally:
                    response.close()
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise NotFound("the daemon does not exist") from None
            raise RuntimeUnavailable("Docker Engine refused the logs") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise RuntimeUnavailable("lost the Docker log stream") from exc


class _DockerAttachment:
    """An aiodocker attach stream (raw, multiplexed: containers run without a TTY)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def write(self, data: bytes) -> None:
        try:
            await self._stream.write_in(data)
        except (RuntimeError, aiohttp.ClientError, OSError, AssertionError) as exc:
            raise RuntimeUnavailable("the attachment is closed") from exc

    async def read(self) -> OutputChunk | None:
        try:
            message = await self._stream.read_out()
        except (aiohttp.ClientError, OSError):
            return None
        if message is None:
            return None
        return OutputChunk(int(message.stream), bytes(message.data))

    async def close(self) -> None:
        try:
            await self._stream.close()
        except (aiohttp.ClientError, OSError):
            pass


async def _demultiplex(content: aiohttp.StreamReader) -> AsyncGenerator[OutputChunk, None]:
    """Docker's multiplexed stream: 8-byte headers (stream, 3 zero bytes, big-endian size)."""
    while True:
        try:
            header = await content.readexactly(8)
        except asyncio.IncompleteReadError:
            return
        size = int.from_bytes(header[4:8], "big")
        try:
            data = await content.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            data = exc.partial
        if data:
            yield OutputChunk(header[0], data)
        if len(data) < size:
            return


def _service_config(spec: ServiceSpec) -> dict[str, Any]:
    exposed: dict[str, dict[str, Any]] = {f"{port}/tcp": {} for port in spec.ports}
    bindings = {
        f"{port}/tcp": [{"HostIp": spec.bind_address, "HostPort": ""}] for port in spec.ports
    }
    mounts = [
        {"Type": "volume", "Source": spec.volume, "Target": path}
        for path in spec.mounts
        if spec.volume
    ]
    host_config: dict[str, Any] = {
        "PortBindings": bindings,
        "Mounts": mounts,
        "Memory": spec.memory_bytes,
        "MemorySwap": spec.memory_bytes,
        "NanoCpus": spec.nano_cpus,
        "PidsLimit": spec.pids,
        "SecurityOpt": ["no-new-privileges"],
        "RestartPolicy": {"Name": spec.restart},
        "Privileged": False,
        "ExtraHosts": list(spec.extra_hosts),
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}},
        "Init": True,
    }
    if spec.network:
        host_config["NetworkMode"] = spec.network
    if spec.cap_drop_all:
        host_config["CapDrop"] = ["ALL"]
        host_config["CapAdd"] = list(spec.cap_add)
    if spec.shm_bytes:
        host_config["ShmSize"] = spec.shm_bytes
    config: dict[str, Any] = {
        "Image": spec.image,
        "Labels": spec.labels,
        "ExposedPorts": exposed,
        "Env": [f"{k}={v}" for k, v in spec.env.items()],
        "OpenStdin": spec.open_stdin,
        "StdinOnce": False,
        "AttachStdin": False,
        "Tty": False,
        "HostConfig": host_config,
    }
    if spec.cmd is not None:
        config["Cmd"] = list(spec.cmd)
    if spec.user:
        config["User"] = spec.user
    return config


def _event_from(data: dict[str, Any]) -> RuntimeEvent | None:
    actor = data.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    action = str(data.get("Action") or data.get("status") or "")
    if not action or not actor.get("ID"):
        return None
    exit_code = attributes.get("exitCode")
    labels = {k: v for k, v in attributes.items() if k.startswith("herder.")}
    return RuntimeEvent(
        action=action.split(":")[0],
        id=actor["ID"],
        labels=labels,
        exit_code=int(exit_code) if exit_code not in (None, "") else None,
        time=float(data.get("timeNano", 0)) / 1e9 or time.time(),
    )


def _has_labels_raw(have: dict[str, str], want: dict[str, str]) -> bool:
    return all(have.get(k) == v for k, v in want.items())


def _has_labels(info: ContainerInfo, labels: dict[str, str]) -> bool:
    return all(info.labels.get(k) == v for k, v in labels.items())


def _refused(exc: aiodocker.DockerError, image: str, doing: str) -> Exception:
    """An engine error: the caller's image when the engine says 400 (no
    command, an entrypoint that cannot run), else the engine's trouble."""
    if exc.status == 400:
        message = str(exc.message or "").strip()[:300]
        return BadRequest(f"image {image!r} cannot run as a daemon: {message}")
    return RuntimeUnavailable(f"Docker Engine refused to {doing}")


def _address(networks: dict[str, Any], mode: str) -> str:
    """The container's IP address on the network it was created on (its
    `NetworkMode`: the herder network, or `default`/`bridge` for the engine's
    bridge), else on any network it has one; empty when none."""
    chosen = networks.get(mode) or {}
    if chosen.get("IPAddress"):
        return str(chosen["IPAddress"])
    return next((str(n["IPAddress"]) for n in networks.values() if n.get("IPAddress")), "")


def _from_list_entry(data: dict[str, Any]) -> ContainerInfo:
    ports: dict[str, int] = {}
    for port in data.get("Ports") or []:
        if port.get("PublicPort"):
            ports.setdefault(str(port["PrivatePort"]), int(port["PublicPort"]))
    networks = (data.get("NetworkSettings") or {}).get("Networks") or {}
    address = _address(networks, (data.get("HostConfig") or {}).get("NetworkMode", ""))
    names = data.get("Names") or [""]
    return ContainerInfo(
        id=data["Id"],
        name=names[0].lstrip("/"),
        image=data.get("Image", ""),
        state=data.get("State", ""),
        status=data.get("Status", ""),
        labels=data.get("Labels") or {},
        ports=ports,
        address=address,
        created=str(data.get("Created", "")),
        created_at=float(data.get("Created") or 0),
        raw=data,
    )


def _from_inspect(data: dict[str, Any]) -> ContainerInfo:
    ports: dict[str, int] = {}
    settings = data.get("NetworkSettings") or {}
    for key, bindings in (settings.get("Ports") or {}).items():
        if bindings:
            ports[key.split("/")[0]] = int(bindings[0]["HostPort"])
    networks = settings.get("Networks") or {}
    address = _address(networks, (data.get("HostConfig") or {}).get("NetworkMode", ""))
    state = data.get("State") or {}
    return ContainerInfo(
        id=data["Id"],
        name=data.get("Name", "").lstrip("/"),
        image=(data.get("Config") or {}).get("Image", ""),
        state=state.get("Status", ""),
        status=state.get("Status", ""),
        labels=(data.get("Config") or {}).get("Labels") or {},
        ports=ports,
        address=address,
        created=data.get("Created", ""),
        created_at=_docker_time(data.get("Created", "")),
        finished_at=_docker_time(state.get("FinishedAt", "")),
        raw=data,
    )


def _docker_time(value: str) -> float:
    """Epoch seconds of Docker's RFC 3339 nanosecond times; 0 for none or the zero time."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", value)
    if match is None or value.startswith("0001-"):
        return 0.0
    whole, fraction, zone = match.groups()
    zone = "+00:00" if zone in (None, "Z") else zone
    parsed = datetime.fromisoformat(f"{whole}.{(fraction or '0')[:6]:0<6}{zone}")
    return parsed.timestamp()
