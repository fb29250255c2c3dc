"""Container engines behind one protocol: `DockerRuntime` (one engine) and
`SwarmRuntime` (a Docker Swarm), chosen by `HERDER_RUNTIME`."""

from .base import ContainerInfo, NodeInfo, RunResult, RunSpec, Runtime, RuntimeUnavailable
from .docker import DockerRuntime
from .swarm import SwarmRuntime

RUNTIMES = ("docker", "swarm")


def make_runtime(kind: str, url: str) -> DockerRuntime | SwarmRuntime:
    """The runtime `HERDER_RUNTIME` names, on the engine at `url`."""
    if kind == "swarm":
        return SwarmRuntime(url)
    return DockerRuntime(url)


__all__ = [
    "RUNTIMES",
    "ContainerInfo",
    "DockerRuntime",
    "NodeInfo",
    "RunResult",
    "RunSpec",
    "Runtime",
    "RuntimeUnavailable",
    "SwarmRuntime",
    "make_runtime",
]
