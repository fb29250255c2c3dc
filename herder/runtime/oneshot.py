"""Docker helpers for one-shot runs (minions): the container config and its
waiting wrapper, the attach stream, capped output capture and a strict,
streamed copy-out of one file.

`herder.runtime.runs` puts them together; each helper talks to the engine
through aiodocker and knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import json
import posixpath
import re
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
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


# The run's own process: it waits for a line on stdin (the run's nonce), so
# a container can be created and started before its run (a warm pool); the
# files follow the line on stdin as a tar, unpacked into the workdir (much
# cheaper than the engine's archive API, which starts a helper process of
# the engine for every copy); then it runs the image's
# command with no stdin, kills whatever the command left running, and writes
# the nonce to stdout and a last stderr line marked with it: the exit code,
# the container's OOM kills so far (looked up when the code is not 0) and
# the KiB left free in the workdir (one `df`, the only fork). It stays
# up (waiting on stdin again) so the output file can be copied out of the
# workdir, a tmpfs that goes with the container.
WRAPPER = r"""read -r herder_nonce herder_files || exit 0
if [ "$herder_files" = tar ]; then
  tar -x -f - || echo "[herder: the files could not be unpacked: the image needs tar]" >&2
fi
"$@" </dev/null
herder_rc=$?
kill -9 -1 2>/dev/null
herder_oom=0
if [ "$herder_rc" -ne 0 ]; then
  for herder_f in /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control; do
    if [ -r "$herder_f" ]; then
      while read -r herder_k herder_v; do
        if [ "$herder_k" = oom_kill ]; then herder_oom=$herder_v; fi
      done < "$herder_f"
    fi
  done
fi
set -- $(df -Pk . 2>/dev/null)
herder_free=${11:--1}
printf '%s' "$herder_nonce"
printf '\n%s %s %s %s\n' "$herder_nonce" "$herder_rc" "$herder_oom" "${herder_free:--1}" >&2
read -r herder_nonce
"""
WRAPPER_NAME = "herder-run"


def run_config(spec: RunSpec, command: list[str]) -> dict[str, Any]:
    """The container config of a one-shot run: every limit, no host binds.

    `command` is what the run executes (the image's entrypoint and command,
    or `spec.cmd`); the container's own process is `WRAPPER` around it."""
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
        # The workdir: an anonymous volume of the local driver backed by a
        # tmpfs of `disk_bytes` (a cap the host's disk never sees), deleted
        # with the container. A volume, not a `Tmpfs` mount, because the
        # engine's archive API reaches volumes (while the container runs).
        "Mounts": [
            {
                "Type": "volume",
                "Target": spec.workdir,
                "VolumeOptions": {
                    "DriverConfig": {
                        "Name": "local",
                        "Options": {
                            "type": "tmpfs",
                            "device": "tmpfs",
                            "o": (
                                f"size={spec.disk_bytes},uid={spec.uid},gid={spec.gid},"
                                "mode=0755,nosuid,nodev"
                            ),
                        },
                    }
                },
            }
        ],
        "Tmpfs": {"/tmp": f"rw,nosuid,nodev,size={spec.tmp_bytes}"},
        "LogConfig": {
            "Type": "json-file",
            "Config": {"max-size": str(max(spec.output_limit * 2, 1 << 20)), "max-file": "1"},
        },
        "RestartPolicy": {"Name": "no"},
        "AutoRemove": False,
    }
    return {
        "Image": spec.image,
        "Labels": spec.labels,
        "User": f"{spec.uid}:{spec.gid}",
        "WorkingDir": spec.workdir,
        "Env": [f"{k}={v}" for k, v in spec.env.items()],
        "Entrypoint": ["sh", "-c", WRAPPER, WRAPPER_NAME],
        "Cmd": command or ["sh", f"{spec.workdir}/main.sh"],
        # stdin carries the run's nonce (its start signal) and nothing else;
        # it closes when the herder's attachment does.
        "AttachStdin": False,
        "AttachStdout": True,
        "AttachStderr": True,
        "OpenStdin": True,
        "StdinOnce": True,
        "Tty": False,
        "NetworkDisabled": spec.network is None,
        "HostConfig": host_config,
    }


@dataclass(frozen=True)
class Trailer:
    """The wrapper's last line: how the run's command ended."""

    exit_code: int
    oom_kills: int
    free_kib: int  # left in the workdir; -1 when the image has no `df`


class StreamTail:
    """Passes a stream on to `sink`, holding back its last bytes until it is
    clear they are not the wrapper's end mark (which may come split across
    frames, or glued to the command's last output). stdout ends with the
    nonce alone, stderr with the trailer line; each pipe keeps its order,
    but the two arrive in either order, so a run is over once both came."""

    def __init__(self, sink: CappedBuffer, nonce: str, *, trailer: bool) -> None:
        self.sink = sink
        mark = re.escape(nonce.encode())
        if trailer:
            mark = rb"\n" + mark + rb" (\d{1,3}) (\d{1,12}) (-?\d{1,20})\n"
        self._pattern = re.compile(mark + rb"\Z")
        self._keep = len(nonce) + 96
        self._pending = b""
        self.ended: re.Match[bytes] | None = None

    def add(self, data: bytes) -> bool:
        """Take a frame; True once the end mark has come."""
        if self.ended is not None:
            return True  # nothing of the run's can come after its mark
        pending = self._pending + data
        match = self._pattern.search(pending)
        if match is not None:
            self.sink.add(pending[: match.start()])
            self._pending = b""
            self.ended = match
            return True
        cut = len(pending) - self._keep
        if cut > 0:
            self.sink.add(pending[:cut])
            pending = pending[cut:]
        self._pending = pending
        return False

    def flush(self) -> None:
        """The stream ended without a mark: what was held back is output too."""
        self.sink.add(self._pending)
        self._pending = b""

    def trailer(self) -> Trailer | None:
        if self.ended is None or self.ended.lastindex is None:
            return None
        return Trailer(int(self.ended[1]), int(self.ended[2]), int(self.ended[3]))


def attach_stream(docker: aiodocker.Docker, container_id: str) -> Stream:
    """A stdin+stdout+stderr attach stream of a run's container.

    aiodocker's own `attach` inspects the container first to learn whether it
    has a TTY; a run never has one, so this skips that round trip.
    """

    async def setup() -> tuple[URL, bytes | None, bool]:
        query = {
            "stream": "1",
            "stdin": "1",
            "stdout": "1",
            "stderr": "1",
            "logs": "0",
            "detachKeys": "",
        }
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


async def capture(stream: Stream, stdout: StreamTail, stderr: StreamTail) -> Trailer | None:
    """Read the attach stream up to the wrapper's end marks (then the command
    has ended) or to its end (the container stopped), sorting frames into
    the two buffers."""
    while True:
        message = await stream.read_out()
        if message is None:
            stdout.flush()
            stderr.flush()
            return None
        tail = stderr if message.stream == 2 else stdout
        if tail.add(message.data) and stdout.ended and stderr.ended:
            return stderr.trailer()


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


class OutputFile:
    """The output file of a run, read from the engine as its client takes it.

    `size` is known before the first byte; `chunks` yields the file's bytes
    (the tar stream the engine sends, its header already checked); `close`
    releases the engine's response (idempotent)."""

    def __init__(self, response: Any, size: int, head: bytes) -> None:
        self._response = response
        self.size = size
        self._head = head  # bytes of the file already read with the header

    async def chunks(self, chunk_bytes: int = 1 << 16) -> AsyncIterator[bytes]:
        left = self.size
        if self._head:
            head, self._head = self._head[:left], b""
            left -= len(head)
            yield head
        while left > 0:
            data = await self._response.content.read(min(chunk_bytes, left))
            if not data:
                raise OSError("the engine's archive stream ended early")
            left -= len(data)
            yield data
        self.close()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def close(self) -> None:
        self._response.close()


async def open_output(
    docker: aiodocker.Docker, container_id: str, workdir: str, name: str, limit: int
) -> tuple[OutputFile | None, str | None]:
    """The output file `workdir/name`, a regular file reached through real
    directories only, opened for streaming; else None and the reason.

    Every component is checked on its own (the engine would follow a
    symlink in the middle of a path), and the run's command and everything
    it started are gone, so nothing can change between the checks and the
    copy.
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
    url = docker._canonicalize_url(f"containers/{container_id}/archive", versioned_api=True)
    response = await docker.session.get(url, params={"path": current})
    try:
        if response.status >= 400:
            raise aiodocker.DockerError(response.status, "cannot copy the output file out")
        member, head = await _tar_member(response.content)
    except BaseException:
        response.close()
        raise
    if member is None or not member.isreg() or member.name != parts[-1] or member.size > limit:
        response.close()
        if member is not None and member.isreg() and member.size > limit:
            return None, f"output file {name!r} is larger than {limit} bytes; not returned"
        return None, f"output file {name!r} is not a regular file; not returned"
    return OutputFile(response, member.size, head), None


async def _tar_member(content: Any) -> tuple[tarfile.TarInfo | None, bytes]:
    """The first real member's header of a tar stream (PAX and GNU long-name
    headers applied), read block by block; and nothing of its data yet."""
    path: str | None = None
    size: int | None = None
    for _ in range(4):  # extended headers, then the member
        try:
            block = await content.readexactly(tarfile.BLOCKSIZE)
        except asyncio.IncompleteReadError:
            return None, b""
        try:
            member = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            return None, b""
        if member.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME):
            if member.size > 1 << 16:
                return None, b""
            padded = -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            try:
                data = (await content.readexactly(padded))[: member.size]
            except asyncio.IncompleteReadError:
                return None, b""
            if member.type == tarfile.GNUTYPE_LONGNAME:
                path = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif member.type == tarfile.XHDTYPE:
                records = _pax_records(data)
                path = records.get("path", path)
                if "size" in records and records["size"].isdigit():
                    size = int(records["size"])
            continue
        if path is not None:
            member.name = path
        if size is not None:
            member.size = size
        return member, b""
    return None, b""


def _pax_records(data: bytes) -> dict[str, str]:
    """`<length> <key>=<value>\\n` records of a PAX extended header."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            break
        if length <= 0:
            break
        record = data[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records
