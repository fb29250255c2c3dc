"""Container engines behind one protocol. `DockerRuntime` is the only one so far."""

from .base import ContainerInfo, Runtime, RuntimeUnavailable
from .docker import DockerRuntime

__all__ = ["ContainerInfo", "DockerRuntime", "Runtime", "RuntimeUnavailable"]
