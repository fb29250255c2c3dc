"""The Docker implementation of the Runtime protocol, on aiodocker."""

from __future__ import annotations

import json
from typing import Any

import aiodocker

from .base import ContainerInfo, RuntimeUnavailable


class DockerRuntime:
    def __init__(self, url: str) -> None:
        self.url = url
        self.docker = aiodocker.Docker(url=url)

    async def close(self) -> None:
        await self.docker.close()

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

    async def remove(self, ref: str, *, volumes: bool = False) -> None:
        try:
            container = self.docker.containers.container(ref)
            await container.delete(force=True, v=volumes)
        except aiodocker.DockerError as exc:
            if exc.status in (404, 409):
                return
            raise RuntimeUnavailable("Docker Engine error") from exc


def _has_labels(info: ContainerInfo, labels: dict[str, str]) -> bool:
    return all(info.labels.get(k) == v for k, v in labels.items())


def _from_list_entry(data: dict[str, Any]) -> ContainerInfo:
    ports: dict[str, int] = {}
    for port in data.get("Ports") or []:
        if port.get("PublicPort"):
            ports.setdefault(str(port["PrivatePort"]), int(port["PublicPort"]))
    networks = (data.get("NetworkSettings") or {}).get("Networks") or {}
    address = next((n.get("IPAddress", "") for n in networks.values() if n.get("IPAddress")), "")
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
        raw=data,
    )


def _from_inspect(data: dict[str, Any]) -> ContainerInfo:
    ports: dict[str, int] = {}
    settings = data.get("NetworkSettings") or {}
    for key, bindings in (settings.get("Ports") or {}).items():
        if bindings:
            ports[key.split("/")[0]] = int(bindings[0]["HostPort"])
    networks = settings.get("Networks") or {}
    address = next((n.get("IPAddress", "") for n in networks.values() if n.get("IPAddress")), "")
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
        raw=data,
    )
