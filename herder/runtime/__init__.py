"""Container engines behind one protocol. `DockerRuntime` is the only one so far."""

from .base import ContainerInfo, RunResult, RunSpec, Runtime, RuntimeUnavailable
from .docker import DockerRuntime

__all__ = [
    "ContainerInfo",
    "DockerRuntime",
    "RunResult",
    "RunSpec",
    "Runtime",
    "RuntimeUnavailable",
]
