"""The Runtime protocol: everything the herder asks of a container engine.

Services (minions, daemons, golems) talk to a `Runtime`, never to Docker,
so another engine (Docker Swarm, for several machines) can be added without
touching the routes. Implementations map engine errors to `HerderError`s or
`RuntimeUnavailable`; they never leak an engine's raw message to clients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ServiceUnavailable

LABEL_MANAGED = "herder.managed"
LABEL_KIND = "herder.kind"
LABEL_SUBJECT = "herder.subject"
LABEL_JTI = "herder.jti"
LABEL_NAME = "herder.name"
LABEL_INSTANCE = "herder.instance"
LABEL_GROUP = "herder.group"


class RuntimeUnavailable(ServiceUnavailable):
    message = "container engine unavailable"


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
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


class Runtime(Protocol):
    async def ping(self) -> None:
        """Raise `RuntimeUnavailable` unless the engine answers. Called by /healthz."""

    async def version(self) -> dict[str, Any]:
        """The engine's version document (Docker: /version)."""

    async def list(self, labels: dict[str, str], *, all: bool = True) -> list[ContainerInfo]:
        """Containers carrying all `labels` (exact key=value matches)."""

    async def inspect(self, ref: str) -> ContainerInfo | None:
        """One container by exact id or exact name; None when it does not exist."""

    async def remove(self, ref: str, *, volumes: bool = False) -> None:
        """Force-remove a container; a container already gone counts as done."""

    async def close(self) -> None:
        """Release the engine connection; called once at shutdown."""
