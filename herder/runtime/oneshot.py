"""Docker helpers for one-shot runs (minions): the container config, the
attach stream, capped output capture and a strict copy-out of one file.

`DockerRuntime.run_once` puts them together; each helper talks to the
engine through aiodocker and knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import posixpath
import tarfile
from typing import Any

import aiodocker
from aiodocker.stream import Stream
from yarl import URL

from .base import RunSpec

# Go's os.FileMode bits, as the engine reports them in a path stat.
_MODE_DIR = 1 << 31
_MODE_SYMLINK = 1 << 27
_NOT_REGULAR = (
    _MODE_DIR
    | _MODE_SYMLINK
    | (1 << 26)  # named pipe
    | (1 << 25)  # socket
    | (1 << 21)  # character device
    | (1 << 19)  # irregular
    | (1 << 28)  # temporary
    | (1 << 30)  # append-only
)


def run_config(spec: RunSpec) -> dict[str, Any]:
    """The container config of a one-shot run: every limit, no host binds."""
    host_config: dict[str, Any] = {
        "Memory": spec.memory_bytes,
        "MemorySwap": spec.memory_bytes,  # equal: no swap beyond memory
        "NanoCpus": spec.nano_cpus,
        "PidsLimit": spec.pids,
        "Ulimits": [{"Name": "nofile", "Soft": spec.nofile, "Hard": spec.nofile}],
        "NetworkMode": spec.network or "none",
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "Privileged": False,
        "Init": True,
        "ReadonlyRootfs": True,
        # An anonymous volume is writable on a read-only root, takes files
        # through the archive API before start, and goes with `v=True`.
        "Tmpfs": {"/tmp": f"rw,nosuid,nodev,size={spec.tmp_bytes}"},
        "LogConfig": {
            "Type": "json-file",
            "Config": {"max-size": str(max(spec.output_limit * 2, 1 << 20)), "max-file": "1"},
        },
        "RestartPolicy": {"Name": "no"},
        "AutoRemove": False,
    }
    config: dict[str, Any] = {
        "Image": spec.image,
        "Labels": spec.labels,
        "User": f"{spec.uid}:{spec.gid}",
        "WorkingDir": spec.workdir,
        "Volumes": {spec.workdir: {}},
        "Env": [f"{k}={v}" for k, v in spec.env.items()],
        "AttachStdin": False,
        "AttachStdout": True,
        "AttachStderr": True,
        "OpenStdin": False,
        "Tty": False,
        "NetworkDisabled": spec.network is None,
        "HostConfig": host_config,
    }
    if spec.cmd is not None:
        config["Cmd"] = list(spec.cmd)
    return config


def attach_stream(docker: aiodocker.Docker, container_id: str) -> Stream:
    """A stdout+stderr attach stream, to open before start so nothing is missed.

    aiodocker's own `attach` inspects the container first to learn whether it
    has a TTY; a run never has one, so this skips that round trip.
    """

    async def setup() -> tuple[URL, bytes | None, bool]:
        query = {"stream": "1", "stdout": "1", "stderr": "1", "logs": "0", "detachKeys": ""}
        return URL(f"containers/{container_id}/attach").with_query(query), None, False

    return Stream(docker, setup)


class CappedBuffer:
    """Keeps the first `limit` bytes of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self._kept = 0
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self.limit - self._kept
        if room > 0:
            piece = data[:room]
            self._parts.append(piece)
            self._kept += len(piece)
            self.dropped += len(data) - len(piece)
        else:
            self.dropped += len(data)

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def value(self) -> bytes:
        data = b"".join(self._parts)
        if self.dropped:
            data += (
                f"\n[herder: output cut at {self.limit} bytes; "
                f"{self.dropped} more bytes dropped]\n".encode()
            )
        return data


async def capture(stream: Stream, stdout: CappedBuffer, stderr: CappedBuffer) -> None:
    """Read the attach stream to its end, sorting frames into the two buffers."""
    while True:
        message = await stream.read_out()
        if message is None:
            return
        (stderr if message.stream == 2 else stdout).add(message.data)


async def path_stat(
    docker: aiodocker.Docker, container_id: str, path: str
) -> dict[str, Any] | None:
    """The engine's stat of `path` in the container, without following a final
    symlink; None when it does not exist."""
    url = docker._canonicalize_url(f"containers/{container_id}/archive", versioned_api=True)
    async with docker.session.head(url, params={"path": path}) as response:
        if response.status == 404:
            return None
        if response.status >= 400:
            raise aiodocker.DockerError(response.status, "cannot stat a path in the container")
        header = response.headers.get("X-Docker-Container-Path-Stat")
    if not header:
        return None
    stat: dict[str, Any] = json.loads(base64.b64decode(header))
    return stat


async def copy_out(
    docker: aiodocker.Docker, container_id: str, workdir: str, name: str, limit: int
) -> tuple[bytes | None, str | None]:
    """The bytes of `workdir/name`, a regular file reached through real
    directories only; else None and the reason.

    Every component is checked on its own (the engine would follow a
    symlink in the middle of a path), and the container has exited, so
    nothing can change between the checks and the copy.
    """
    parts = name.split("/")
    current = workdir
    for i, part in enumerate(parts):
        current = posixpath.join(current, part)
        stat = await path_stat(docker, container_id, current)
        if stat is None:
            return None, f"output file {name!r} was not found"
        mode = int(stat.get("mode", 0))
        is_last = i == len(parts) - 1
        if stat.get("linkTarget") or mode & _MODE_SYMLINK:
            return None, f"output file {name!r} is a symbolic link; not returned"
        if not is_last and not mode & _MODE_DIR:
            return None, f"output file {name!r} was not found"
        if is_last:
            if mode & _NOT_REGULAR:
                return None, f"output file {name!r} is not a regular file; not returned"
            if int(stat.get("size", 0)) > limit:
                return None, f"output file {name!r} is larger than {limit} bytes; not returned"
    async with docker._query(
        f"containers/{container_id}/archive", method="GET", params={"path": current}
    ) as response:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit + (1 << 16):  # a tar adds headers and padding only
                response.close()  # aiodocker's `_query` does not release it for us
                return None, f"output file {name!r} is larger than {limit} bytes; not returned"
    data = await asyncio.to_thread(_single_regular_file, b"".join(chunks), parts[-1], limit)
    if data is None:
        return None, f"output file {name!r} is not a regular file; not returned"
    return data, None


def _single_regular_file(archive: bytes, name: str, limit: int) -> bytes | None:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        member = tar.next()
        if member is None or not member.isreg() or member.name != name or member.size > limit:
            return None
        extracted = tar.extractfile(member)
        return extracted.read() if extracted is not None else None
