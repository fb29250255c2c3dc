"""The Docker Swarm implementation of the Runtime protocol (`HERDER_RUNTIME=swarm`).

Daemons and golems are Swarm services of one task (DockerSpawner's
SwarmSpawner is the model): the Swarm places, restarts and reschedules
them. A "container" of the protocol is then a service: `ContainerInfo.id` is
the service id, `name` the service name, and state, ports, address and node
come from its current task. Ports are published in host mode with
engine-assigned ports on the task's node (there is no routing mesh here),
the address is the task's address on the herder overlay network (every
replica is on it, so the proxy dials it from any node).

Minions (one-shot runs) are plain containers on this replica's own node,
and so are attach and exec to tasks that run here: they go to the
`DockerRuntime` of the local engine. `list` shows services and this node's
plain herder containers together, so start-up sweeps still find stray
minions.

The herder must talk to a manager's engine (services are created through
managers only); in the lab every node is a manager.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import aiodocker
import aiohttp

from ..errors import BadRequest, Conflict, ImageNotFound, NotFound, PayloadTooLarge
from .base import (
    LABEL_MANAGED,
    Attachment,
    ContainerInfo,
    ExecResult,
    NodeInfo,
    OnAnotherNode,
    OutputChunk,
    RunResult,
    RunSpec,
    RuntimeEvent,
    RuntimeUnavailable,
    ServiceSpec,
)
from .docker import DockerRuntime, _demultiplex, _docker_time

log = logging.getLogger("herder.runtime")

LABEL_SERVICE_ID = "com.docker.swarm.service.id"
LABEL_FILE_OF = "herder.file-of"  # on the configs carrying a service's files
GPU_KIND = "gpu"
# Task states, mapped to the container states the services expect.
_RUNNING = {"running"}
_STARTING = {
    "new",
    "allocated",
    "pending",
    "assigned",
    "accepted",
    "preparing",
    "ready",
    "starting",
}
_FAILED = {"failed", "rejected", "orphaned"}
_RESTART = {"unless-stopped": "any", "always": "any", "on-failure": "on-failure", "no": "none"}
# Seconds a spawn waits for its task to run.
START_TIMEOUT = 60.0
# Seconds between polls of the task list for events.
EVENT_POLL = 1.0
CONFIG_LIMIT = 500 * 1024  # the Swarm's limit on one config
# The configs made for one spawn's files (`list` is a method name in the class).
_Configs = list[dict[str, str]]


class SwarmRuntime:
    """Swarm services for daemons and golems; the local engine for the rest."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.local = DockerRuntime(url)
        self.docker = self.local.docker
        self._node_id = ""
        self._networks: set[str] = set()
        self._network_lock = asyncio.Lock()

    async def close(self) -> None:
        await self.local.close()

    # -- engine ---------------------------------------------------------------

    async def ping(self) -> None:
        await self.local.ping()

    async def version(self) -> dict[str, Any]:
        return await self.local.version()

    async def node_id(self) -> str:
        """This replica's node in the Swarm (`RuntimeUnavailable` when not in one)."""
        if not self._node_id:
            try:
                info = await self.docker.system.info()
            except (aiodocker.DockerError, OSError) as exc:
                raise RuntimeUnavailable("Docker Engine not answering") from exc
            swarm = info.get("Swarm") or {}
            if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
                raise RuntimeUnavailable("this engine is not a manager of an active Swarm")
            self._node_id = str(swarm.get("NodeID") or "")
        return self._node_id

    async def nodes(self) -> list[NodeInfo]:
        try:
            items = await self.docker.nodes.list()
        except (aiodocker.DockerError, OSError) as exc:
            raise RuntimeUnavailable("the Swarm did not list its nodes") from exc
        return sorted((_node_from(dict(n)) for n in items), key=lambda n: n.hostname)

    async def _node_map(self) -> dict[str, NodeInfo]:
        return {n.id: n for n in await self.nodes()}

    # -- services as containers -----------------------------------------------

    async def _services(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        try:
            items = [dict(s) for s in await self.docker.services.list(filters=filters)]
        except (aiodocker.DockerError, OSError) as exc:
            raise RuntimeUnavailable("the Swarm did not list its services") from exc
        return [s for s in items if _labels_match(_service_labels(s), labels)]

    async def _tasks(self, service_ids: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """The current task of each service (the newest one meant to run, else the newest)."""
        try:
            if service_ids is not None and len(service_ids) == 1:
                tasks = await self.docker.tasks.list(filters={"service": service_ids[0]})
            else:
                tasks = await self.docker.tasks.list()
        except aiodocker.DockerError as exc:
            if exc.status == 404:  # the service went meanwhile
                return {}
            raise RuntimeUnavailable("the Swarm did not list its tasks") from exc
        except OSError as exc:
            raise RuntimeUnavailable("Docker Engine not answering") from exc
        current: dict[str, dict[str, Any]] = {}
        for listed in tasks:
            task = dict(listed)
            sid = str(task.get("ServiceID", ""))
            if service_ids is not None and sid not in service_ids:
                continue
            best = current.get(sid)
            if best is None or _task_rank(task) > _task_rank(best):
                current[sid] = task
        return current

    async def _infos(self, services: list[dict[str, Any]]) -> list[ContainerInfo]:
        if not services:
            return []
        tasks, nodes = await asyncio.gather(
            self._tasks([s["ID"] for s in services]), self._node_map()
        )
        return [_info_from(s, tasks.get(s["ID"]), nodes) for s in services]

    async def list(self, labels: dict[str, str], *, all: bool = True) -> list[ContainerInfo]:
        services, local = await asyncio.gather(
            self._services(labels), self.local.list(labels, all=all)
        )
        infos = await self._infos(services)
        if not all:
            infos = [i for i in infos if i.state == "running"]
        # Task containers are shown as their services; plain ones (minions) as they are.
        return infos + [c for c in local if LABEL_SERVICE_ID not in c.labels]

    async def _service(self, ref: str) -> dict[str, Any] | None:
        try:
            service = dict(await self.docker.services.inspect(ref))
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            raise RuntimeUnavailable("Docker Engine error") from exc
        except OSError as exc:
            raise RuntimeUnavailable("Docker Engine not answering") from exc
        if ref not in (service.get("ID"), (service.get("Spec") or {}).get("Name")):
            return None  # an id prefix
        return service

    async def inspect(self, ref: str) -> ContainerInfo | None:
        service = await self._service(ref)
        if service is None:
            return await self.local.inspect(ref)
        return (await self._infos([service]))[0]

    async def remove(self, ref: str) -> None:
        service = await self._service(ref)
        if service is None:
            await self.local.remove(ref)
            return
        try:
            await self.docker.services.delete(service["ID"])
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise RuntimeUnavailable("the Swarm refused to remove the service") from exc
        await self._remove_configs(str((service.get("Spec") or {}).get("Name", "")))
        # Like a container removal, done means gone: wait for the task's container.
        await self._wait_gone(str(service["ID"]))

    async def _wait_gone(self, service_id: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = await self.local.list({LABEL_SERVICE_ID: service_id})
            if not left:
                return
            await asyncio.sleep(0.2)

    async def image_exists(self, image: str) -> bool:
        return await self.local.image_exists(image)

    async def ensure_network(self, name: str) -> None:
        """An attachable overlay network (the Swarm has no bridge isolation:
        daemons on it can reach each other, see the README)."""
        if name in self._networks:
            return
        async with self._network_lock:
            if name in self._networks:
                return
            try:
                listed = await self.docker.networks.list(filters={"name": name})
                found = [n for n in listed if n.get("Name") == name]
                if not found:
                    with contextlib.suppress(aiodocker.DockerError):
                        await self.docker.networks.create(
                            {
                                "Name": name,
                                "Driver": "overlay",
                                "Attachable": True,
                                "CheckDuplicate": True,
                                "Labels": {LABEL_MANAGED: "1"},
                            }
                        )
                    listed = await self.docker.networks.list(filters={"name": name})
                    found = [n for n in listed if n.get("Name") == name]
            except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
                raise RuntimeUnavailable(f"Docker Engine refused the network {name!r}") from exc
            if not found:
                raise RuntimeUnavailable(f"the Swarm did not make the network {name!r}")
            if found[0].get("Driver") != "overlay":
                raise RuntimeUnavailable(
                    f"network {name!r} is not an overlay network: set HERDER_NETWORK"
                )
            self._networks.add(name)
            # Minions on this node join the same network: never a bridge of that name.
            self.local._networks.add(name)

    async def run_service(self, spec: ServiceSpec) -> ContainerInfo:
        if not await self.image_exists(spec.image):
            raise ImageNotFound(f"image {spec.image!r} is not available on this herder")
        if spec.network:
            await self.ensure_network(spec.network)
        if spec.gpus:
            await self._check_gpus(spec.gpus)
        if await self._service(spec.name) is not None:
            raise Conflict(f"a container named {spec.name!r} exists")
        configs = await self._make_configs(spec)
        try:
            created = await self.docker._query_json(
                "services/create", method="POST", data=json.dumps(_service_spec(spec, configs))
            )
        except aiodocker.DockerError as exc:
            await self._drop_configs(configs)
            if exc.status == 409:
                raise Conflict(f"a container named {spec.name!r} exists") from None
            if exc.status == 400:
                raise BadRequest(
                    f"the Swarm refused the service: {str(exc.message or '').strip()[:300]}"
                ) from None
            raise RuntimeUnavailable("the Swarm refused to create the service") from exc
        service_id = str(created["ID"])
        try:
            return await self._wait_running(service_id, spec.image)
        except BaseException:
            await asyncio.shield(self.remove(service_id))
            raise

    async def _wait_running(self, service_id: str, image: str) -> ContainerInfo:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            task = (await self._tasks([service_id])).get(service_id)
            status = (task or {}).get("Status") or {}
            state = str(status.get("State", ""))
            if state in _RUNNING:
                info = await self.inspect(service_id)
                if info is not None and info.state == "running":
                    return info
            if state in _FAILED or (state == "shutdown" and task is not None):
                error = str(status.get("Err") or status.get("Message") or state)
                if "no such image" in error.lower():
                    raise ImageNotFound(f"image {image!r} is not available on the chosen node")
                raise BadRequest(f"image {image!r} cannot run as a daemon: {error[:300]}")
            if state == "pending" and "no suitable node" in str(status.get("Err", "")):
                raise BadRequest(f"no node can run it: {status.get('Err')}"[:400])
            if time.monotonic() > deadline:
                raise RuntimeUnavailable("the Swarm did not start the task in time")
            await asyncio.sleep(0.1)

    async def _check_gpus(self, count: int) -> None:
        offered = max((n.gpus for n in await self.nodes()), default=0)
        if offered == 0:
            raise BadRequest("no node of this cluster offers GPUs")
        if offered < count:
            raise BadRequest(f"no node offers {count} GPUs (at most {offered})")

    async def _make_configs(self, spec: ServiceSpec) -> _Configs:
        """The spawn's files as Swarm configs (mounted read-only into the task)."""
        made: _Configs = []
        try:
            for index, (name, data) in enumerate(sorted(spec.files.items())):
                if len(data) > CONFIG_LIMIT:
                    raise PayloadTooLarge(
                        f"file {name!r} is over {CONFIG_LIMIT // 1024} KiB (a Swarm config's limit)"
                    )
                config_name = f"{spec.name}-f{index}-{int(time.time() * 1000) % 10**9}"
                created = await self.docker.configs.create(
                    config_name,
                    _b64(data),
                    b64=True,
                    labels={LABEL_MANAGED: "1", LABEL_FILE_OF: spec.name},
                )
                made.append({"id": str(created["ID"]), "name": config_name, "file": name})
        except BaseException:
            await self._drop_configs(made)
            raise
        return made

    async def _drop_configs(self, configs: _Configs) -> None:
        for config in configs:
            with contextlib.suppress(aiodocker.DockerError, OSError):
                await self.docker.configs.delete(config["id"])

    async def _remove_configs(self, name: str) -> None:
        with contextlib.suppress(aiodocker.DockerError, OSError):
            for config in await self.docker.configs.list(
                filters={"label": [f"{LABEL_FILE_OF}={name}"]}
            ):
                with contextlib.suppress(aiodocker.DockerError):
                    await self.docker.configs.delete(config["ID"])

    async def _scale(self, ref: str, replicas: int) -> dict[str, Any] | None:
        service = await self._service(ref)
        if service is None:
            return None
        spec = service["Spec"]
        spec["Mode"] = {"Replicated": {"Replicas": replicas}}
        try:
            await self.docker._query_json(
                f"services/{service['ID']}/update",
                method="POST",
                params={"version": str(service["Version"]["Index"])},
                data=json.dumps(spec),
            )
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            raise RuntimeUnavailable("the Swarm refused to update the service") from exc
        return service

    async def start(self, ref: str) -> ContainerInfo | None:
        service = await self._scale(ref, 1)
        if service is None:
            return await self.local.start(ref)
        return await self._wait_running(str(service["ID"]), "")

    async def stop(self, ref: str, *, timeout: float = 5) -> None:
        service = await self._scale(ref, 0)
        if service is None:
            await self.local.stop(ref, timeout=timeout)
            return
        deadline = time.monotonic() + timeout + 10
        while time.monotonic() < deadline:
            task = (await self._tasks([str(service["ID"])])).get(str(service["ID"]))
            if task is None or (task.get("Status") or {}).get("State") not in _RUNNING:
                return
            await asyncio.sleep(0.2)

    async def remove_volume(self, name: str) -> bool:
        # A named volume lives on one node: this one's engine sees only its own.
        return await self.local.remove_volume(name)

    async def events(
        self, labels: dict[str, str], *, since: float | None = None
    ) -> AsyncGenerator[RuntimeEvent, None]:
        """Task state changes of the Swarm's services (polled: the engine's event
        stream tells only this node's containers), then this node's plain
        containers' events merged in."""
        queue: asyncio.Queue[RuntimeEvent | BaseException] = asyncio.Queue()

        async def poll() -> None:
            seen: dict[str, tuple[str, str]] = {}  # service -> (current task, its state)
            labels_of: dict[str, dict[str, str]] = {}  # service -> its labels, when last seen
            first = True
            try:
                while True:
                    services = await self._services(labels)
                    tasks = await self._tasks([s["ID"] for s in services]) if services else {}
                    now = time.time()
                    current: dict[str, tuple[str, str]] = {}
                    for service in services:
                        sid = str(service["ID"])
                        task = tasks.get(sid) or {}
                        now_key = (str(task.get("ID", "")), _state_of(task))
                        current[sid] = now_key
                        before = seen.get(sid)
                        if first or before == now_key:
                            continue
                        for action in _transitions(before, now_key):
                            await queue.put(
                                RuntimeEvent(
                                    action=action,
                                    id=sid,
                                    labels=_service_labels(service),
                                    exit_code=_exit_code(task) if action == "die" else None,
                                    time=now,
                                )
                            )
                    for sid in set(seen) - set(current):
                        gone = labels_of.pop(sid, {})
                        await queue.put(
                            RuntimeEvent(action="destroy", id=sid, labels=gone, time=now)
                        )
                    labels_of.update((str(s["ID"]), _service_labels(s)) for s in services)
                    seen, first = current, False
                    await asyncio.sleep(EVENT_POLL)
            except BaseException as exc:
                await queue.put(exc)

        async def local() -> None:
            try:
                async for event in self.local.events(labels, since=since):
                    if LABEL_SERVICE_ID not in event.labels:
                        await queue.put(event)
            except BaseException as exc:
                await queue.put(exc)

        workers = [asyncio.create_task(poll()), asyncio.create_task(local())]
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    if isinstance(item, asyncio.CancelledError):
                        return
                    if isinstance(item, RuntimeUnavailable):
                        raise item
                    raise RuntimeUnavailable("lost the Swarm's events") from item
                yield item
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    # -- access to a task's container -------------------------------------------

    async def _local_container(self, ref: str) -> str:
        """The container of a service's running task on this node (or a plain
        container of this node): `NotFound` when there is none, `Conflict`
        when the task runs on another node."""
        service = await self._service(ref)
        if service is None:
            return ref
        task = (await self._tasks([str(service["ID"])])).get(str(service["ID"]))
        if task is None or _state_of(task) != "running":
            raise Conflict("the container is not running")
        if str(task.get("NodeID")) != await self.node_id():
            nodes = await self._node_map()
            node = nodes.get(str(task.get("NodeID")))
            where = node.hostname if node else str(task.get("NodeID"))
            raise OnAnotherNode(
                f"it runs on node {where}: ask the herder replica on that node",
                node_id=str(task.get("NodeID")),
                hostname=where,
            )
        container = ((task.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID")
        if not container:
            raise Conflict("the container is not running")
        return str(container)

    async def attach(self, ref: str) -> Attachment:
        try:
            container = await self._local_container(ref)
        except OnAnotherNode:
            raise
        except Conflict as exc:
            raise NotFound(str(exc)) from None
        return await self.local.attach(container)

    async def logs(
        self, ref: str, *, tail: int | None = None, follow: bool = False
    ) -> AsyncGenerator[OutputChunk, None]:
        """A service's logs through the Swarm, from whichever node runs it."""
        service = await self._service(ref)
        if service is None:
            async for chunk in self.local.logs(ref, tail=tail, follow=follow):
                yield chunk
            return
        params = {
            "stdout": "1",
            "stderr": "1",
            "follow": "1" if follow else "0",
            "tail": "all" if tail is None else str(tail),
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=10)
        try:
            async with self.local.streams._query(
                f"services/{service['ID']}/logs", method="GET", params=params, timeout=timeout
            ) as response:
                try:
                    async for chunk in _demultiplex(response.content):
                        yield chunk
                finally:
                    response.close()
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise NotFound("no such container") from None
            raise RuntimeUnavailable("Docker Engine refused the logs") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise RuntimeUnavailable("lost the Swarm's log stream") from exc

    async def exec(self, ref: str, cmd: Sequence[str], *, timeout: float, limit: int) -> ExecResult:
        return await self.local.exec(
            await self._local_container(ref), cmd, timeout=timeout, limit=limit
        )

    @contextlib.asynccontextmanager
    async def run(self, spec: RunSpec, *, prepared: str | None = None) -> AsyncIterator[RunResult]:
        if spec.network:
            await self.ensure_network(spec.network)
        async with self.local.run(spec, prepared=prepared) as result:
            yield result

    async def run_once(self, spec: RunSpec, *, prepared: str | None = None) -> RunResult:
        if spec.network:
            await self.ensure_network(spec.network)
        return await self.local.run_once(spec, prepared=prepared)

    async def prepare_run(self, spec: RunSpec) -> str:
        if spec.network:
            await self.ensure_network(spec.network)
        return await self.local.prepare_run(spec)


# -- pure helpers (unit-tested) ---------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _labels_match(have: dict[str, str], want: dict[str, str]) -> bool:
    return all(have.get(k) == v for k, v in want.items())


def _service_labels(service: dict[str, Any]) -> dict[str, str]:
    return dict(((service.get("Spec") or {}).get("Labels")) or {})


def _task_rank(task: dict[str, Any]) -> tuple[int, int, float]:
    """Order of tasks of one service: meant to run first, then the newest."""
    wanted = 1 if task.get("DesiredState") == "running" else 0
    version = int((task.get("Version") or {}).get("Index") or 0)
    return (wanted, version, _docker_time(str(task.get("CreatedAt", ""))))


def _state_of(task: dict[str, Any] | None) -> str:
    state = str(((task or {}).get("Status") or {}).get("State", ""))
    if state in _RUNNING:
        return "running"
    if not state or state in _STARTING:
        return "created"
    return "exited"


def _transitions(before: tuple[str, str] | None, now: tuple[str, str]) -> list[str]:
    """Container-like events between two looks at a service's current task
    (id, state): a running task that stopped or was replaced "dies", and a
    task that runs now (a restart, or a new node's) "starts"."""
    actions = []
    was_running = before is not None and before[1] == "running"
    if was_running and (before != now):
        actions.append("die")
    if now[1] == "running" and before != now:
        actions.append("start")
    return actions


def _exit_code(task: dict[str, Any]) -> int | None:
    code = ((task.get("Status") or {}).get("ContainerStatus") or {}).get("ExitCode")
    return int(code) if isinstance(code, int) and _state_of(task) == "exited" else None


def _node_from(node: dict[str, Any]) -> NodeInfo:
    description = node.get("Description") or {}
    resources = description.get("Resources") or {}
    gpus = 0
    for resource in resources.get("GenericResources") or []:
        for kind in ("DiscreteResourceSpec", "NamedResourceSpec"):
            item = resource.get(kind) or {}
            if str(item.get("Kind", "")).lower() == GPU_KIND:
                gpus += int(item.get("Value", 1)) if kind == "DiscreteResourceSpec" else 1
    manager = node.get("ManagerStatus") or {}
    return NodeInfo(
        id=str(node.get("ID", "")),
        hostname=str(description.get("Hostname", "")),
        address=str((node.get("Status") or {}).get("Addr", "") or manager.get("Addr", "")).split(
            ":"
        )[0],
        role=str((node.get("Spec") or {}).get("Role", "")),
        availability=str((node.get("Spec") or {}).get("Availability", "")),
        state=str((node.get("Status") or {}).get("State", "")),
        cpus=int(resources.get("NanoCPUs") or 0) / 1e9,
        memory_bytes=int(resources.get("MemoryBytes") or 0),
        gpus=gpus,
        leader=bool(manager.get("Leader")),
    )


def _info_from(
    service: dict[str, Any], task: dict[str, Any] | None, nodes: dict[str, NodeInfo]
) -> ContainerInfo:
    spec = service.get("Spec") or {}
    status = (task or {}).get("Status") or {}
    ports: dict[str, int] = {}
    for port in (status.get("PortStatus") or {}).get("Ports") or []:
        if port.get("PublishedPort"):
            ports.setdefault(str(port["TargetPort"]), int(port["PublishedPort"]))
    address = ""
    for attachment in (task or {}).get("NetworksAttachments") or []:
        net_spec = (attachment.get("Network") or {}).get("Spec") or {}
        if net_spec.get("Name") == "ingress":
            continue
        addresses = attachment.get("Addresses") or []
        if addresses:
            address = str(addresses[0]).split("/")[0]
            break
    state = _state_of(task)
    node = nodes.get(str((task or {}).get("NodeID", "")))
    created_at = _docker_time(str(service.get("CreatedAt", "")))
    container = (status.get("ContainerStatus") or {}).get("ContainerID") or ""
    return ContainerInfo(
        id=str(service["ID"]),
        name=str(spec.get("Name", "")),
        image=str(((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image", "")),
        state=state,
        status=str(status.get("Message") or status.get("State") or ""),
        labels=dict(spec.get("Labels") or {}),
        ports=ports if state == "running" else {},
        address=address if state == "running" else "",
        created=str(service.get("CreatedAt", "")),
        created_at=created_at,
        finished_at=_docker_time(str(status.get("Timestamp", ""))) if state == "exited" else 0.0,
        started_at=_docker_time(str(status.get("Timestamp", ""))) if state == "running" else 0.0,
        node=node,
        raw={
            "Id": service["ID"],
            "Names": ["/" + str(spec.get("Name", ""))],
            "Image": str(
                ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image", "")
            ),
            "State": state,
            "Status": str(status.get("Message") or ""),
            "Labels": dict(spec.get("Labels") or {}),
            "Created": int(created_at),
            "Task": str((task or {}).get("ID", "")),
            "Container": str(container),
        },
    )


def _service_spec(spec: ServiceSpec, configs: _Configs) -> dict[str, Any]:
    """The Engine's ServiceSpec: one replicated task, dnsrr, host-mode ports
    with engine-assigned host ports. A Swarm cannot bind a published port to
    one address, so ports asked for on a loopback address (a golem's
    DevTools: full control of its browser) are not published at all rather
    than opened on every address of the node."""
    published = () if _loopback(spec.bind_address) else spec.ports
    return {
        "Name": spec.name,
        "Labels": spec.labels,
        "TaskTemplate": _task_template(spec, configs),
        "Mode": {"Replicated": {"Replicas": 1}},
        "EndpointSpec": {
            "Mode": "dnsrr",
            "Ports": [
                {"Protocol": "tcp", "TargetPort": p, "PublishMode": "host"} for p in published
            ],
        },
    }


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def _task_template(spec: ServiceSpec, configs: _Configs) -> dict[str, Any]:
    mounts = [
        {
            "Type": "volume",
            "Source": spec.volume,
            "Target": path,
            "VolumeOptions": {"Labels": spec.labels},
        }
        for path in spec.mounts
        if spec.volume
    ]
    container: dict[str, Any] = {
        "Image": spec.image,
        "Labels": spec.labels,
        "Env": [f"{k}={v}" for k, v in spec.env.items()],
        "OpenStdin": spec.open_stdin,
        "TTY": False,
        "Init": True,
        "Mounts": mounts,
        "StopGracePeriod": 5_000_000_000,
        "Hosts": [h for h in map(_swarm_host, spec.extra_hosts) if h],
        "Configs": [
            {
                "ConfigID": c["id"],
                "ConfigName": c["name"],
                "File": {
                    "Name": f"{spec.files_dir.rstrip('/')}/{c['file']}",
                    "UID": "0",
                    "GID": "0",
                    "Mode": 0o444,
                },
            }
            for c in configs
        ],
    }
    if spec.cmd is not None:
        container["Args"] = list(spec.cmd)
    if spec.user:
        container["User"] = spec.user
    if spec.cap_drop_all:
        container["CapabilityDrop"] = ["ALL"]
    if spec.cap_add:
        container["CapabilityAdd"] = list(spec.cap_add)
    resources: dict[str, Any] = {
        "Limits": {
            "NanoCPUs": spec.nano_cpus,
            "MemoryBytes": spec.memory_bytes,
            "Pids": spec.pids,
        }
    }
    if spec.gpus:
        resources["Reservations"] = {
            "GenericResources": [{"DiscreteResourceSpec": {"Kind": GPU_KIND, "Value": spec.gpus}}]
        }
    template: dict[str, Any] = {
        "ContainerSpec": container,
        "Resources": resources,
        "RestartPolicy": {
            "Condition": _RESTART.get(spec.restart, "any"),
            "Delay": 1_000_000_000,
        },
        "LogDriver": {"Name": "json-file", "Options": {"max-size": "10m", "max-file": "2"}},
    }
    if spec.node:
        template["Placement"] = {"Constraints": [f"node.id=={spec.node}"]}
    if spec.network:
        template["Networks"] = [{"Target": spec.network}]
    return template


def _swarm_host(entry: str) -> str:
    """Docker's `host:ip` extra host as the Swarm's `ip host`; "" for
    `host-gateway`, which services do not know (a task's node varies)."""
    host, _, address = entry.rpartition(":")
    if not host or address == "host-gateway":
        return ""
    return f"{address} {host}"
