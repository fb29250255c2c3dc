"""One-shot runs (minions) on Docker, cold or in a container prepared before
the request (a warm pool's).

A run's container is created with every limit and started with
`oneshot.WRAPPER` as its process, which waits for a line on stdin. The
herder attaches, writes the run's nonce and a tar of its files to stdin
(unpacked into the workdir, a tmpfs volume that lives as long as the
container runs), and the wrapper runs the command and reports how it ended
in a last stderr line marked with that nonce. The timeout counts from the nonce on. The output file is read
from the still-running container as the caller takes it; then the
container goes. `prepare_run` does the first half ahead of time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Protocol

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer
from aiodocker.stream import Stream

from ..errors import ImageNotFound
from . import oneshot
from .base import RunResult, RunSpec, RuntimeUnavailable
from .tarball import files_tar

log = logging.getLogger("herder.runtime")

# Seconds to wait, after a run was killed, for the last frames of its output.
_DRAIN_GRACE = 5.0
# Seconds to wait for the exit code of a container that stopped by itself.
_WAIT_GRACE = 10.0
# Seconds an image's entrypoint and command are trusted without asking again.
_COMMAND_TTL = 30.0

_EngineErrors = (aiodocker.DockerError, aiohttp.ClientError, OSError)


class Engine(Protocol):
    """What the runs need of `DockerRuntime` (which delegates its run verbs here)."""

    docker: aiodocker.Docker  # short calls
    runs: aiodocker.Docker  # the attach streams and waits of runs

    def _cleanup(self, work: Coroutine[Any, Any, None]) -> asyncio.Future[None]: ...

    def _tracked(self, future: asyncio.Future[None]) -> asyncio.Future[None]: ...

    async def ensure_network(self, name: str) -> None: ...

    async def _start(self, container: DockerContainer, network: str | None) -> None: ...

    async def remove(self, ref: str) -> None: ...


class OneShotRuns:
    """The run verbs of `DockerRuntime`."""

    def __init__(self, runtime: Engine) -> None:
        self.rt = runtime
        self._commands: dict[str, tuple[float, list[str], list[str]]] = {}

    # -- preparing a container ---------------------------------------------------

    async def command(self, spec: RunSpec) -> list[str]:
        """What the run executes: the image's entrypoint and its command (or `spec.cmd`)."""
        cached = self._commands.get(spec.image)
        if cached is None or time.monotonic() - cached[0] > _COMMAND_TTL:
            try:
                data = await self.rt.docker.images.inspect(spec.image)
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    raise ImageNotFound(f"image {spec.image!r} is not available locally") from None
                raise RuntimeUnavailable("Docker Engine error") from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise RuntimeUnavailable("Docker Engine not answering") from exc
            config = data.get("Config") or {}
            cached = (
                time.monotonic(),
                [str(x) for x in config.get("Entrypoint") or []],
                [str(x) for x in config.get("Cmd") or []],
            )
            self._commands[spec.image] = cached
        _, entrypoint, cmd = cached
        return entrypoint + (list(spec.cmd) if spec.cmd is not None else cmd)

    async def prepare(self, spec: RunSpec) -> str:
        return (await self._create_started(spec)).id

    async def _create_started(self, spec: RunSpec) -> DockerContainer:
        command = await self.command(spec)
        if spec.network:
            await self.rt.ensure_network(spec.network)
        config = oneshot.run_config(spec, command)
        creating = asyncio.ensure_future(self.rt.docker.containers.create(config))
        try:
            # Shielded: cancelled mid-create, the engine still makes the container.
            container = await asyncio.shield(creating)
        except asyncio.CancelledError:
            self.rt._cleanup(self._remove_once_created(creating))
            raise
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise ImageNotFound(f"image {spec.image!r} is not available locally") from None
            raise RuntimeUnavailable("Docker Engine refused to create the container") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise RuntimeUnavailable("Docker Engine not answering") from exc
        starting = asyncio.ensure_future(self.rt._start(container, spec.network))
        try:
            # Shielded too: a removal racing a start the engine is making can
            # be refused (409), so a cancelled start is let finish first.
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            self.rt._cleanup(self._remove_once_started(starting, container.id))
            raise
        except BaseException as exc:
            await asyncio.shield(self.rt._cleanup(self._discard(container.id, None)))
            if isinstance(exc, _EngineErrors):
                raise RuntimeUnavailable("Docker Engine refused to start the container") from exc
            raise
        return container

    async def _remove_once_started(self, starting: asyncio.Future[None], container_id: str) -> None:
        with contextlib.suppress(Exception):
            await starting
        await self._discard(container_id, None)

    async def _remove_once_created(self, creating: asyncio.Future[DockerContainer]) -> None:
        try:
            container = await creating
        except Exception:
            return  # never made
        await self._discard(container.id, None)

    # -- a run -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def run(self, spec: RunSpec, prepared: str | None = None) -> AsyncIterator[RunResult]:
        # Until this run has cleaned up after itself, `close` keeps the clients open.
        running = self.rt._tracked(asyncio.get_running_loop().create_future())
        # A prepared container is this run's from the start: removed whatever happens.
        container_id: str | None = prepared
        stream: Stream | None = None
        output: oneshot.OutputFile | None = None
        try:
            archive = await asyncio.to_thread(files_tar, spec.files, uid=spec.uid, gid=spec.gid)
            pooled = False
            if prepared is not None:
                stream = oneshot.attach_stream(self.rt.runs, prepared)
                try:
                    await stream.__aenter__()
                    pooled = True
                except _EngineErrors:
                    log.info("prepared minion container %s was not waiting: a new one", prepared)
                    self.rt._cleanup(self._discard(prepared, stream))
                    container_id, stream = None, None
            try:
                if container_id is None:
                    container_id = (await self._create_started(spec)).id
                    stream = oneshot.attach_stream(self.rt.runs, container_id)
                    await stream.__aenter__()
                assert stream is not None
                result, output = await self._execute(container_id, stream, spec, archive)
            except _EngineErrors as exc:
                raise RuntimeUnavailable("Docker Engine failed during the run") from exc
            yield dataclasses.replace(result, output_stream=output, pooled=pooled)
        except BaseException:
            if output is not None:
                output.close()
            if container_id is not None:  # a cancelled request still removes it
                await asyncio.shield(self.rt._cleanup(self._discard(container_id, stream)))
            raise
        else:
            if output is not None:
                output.close()
            if container_id is not None:
                # Not waited for: the answer need not wait for the removal (`close` does).
                self.rt._cleanup(self._discard(container_id, stream))
        finally:
            running.set_result(None)

    async def run_once(self, spec: RunSpec, prepared: str | None = None) -> RunResult:
        async with self.run(spec, prepared) as result:
            if result.output_stream is None:
                return result
            try:
                data = b"".join([chunk async for chunk in result.output_stream.chunks()])
            except _EngineErrors as exc:
                raise RuntimeUnavailable("Docker Engine failed copying the output") from exc
            return dataclasses.replace(result, output=data, output_stream=None)

    async def _execute(
        self, container_id: str, stream: Stream, spec: RunSpec, archive: bytes
    ) -> tuple[RunResult, oneshot.OutputFile | None]:
        nonce = secrets.token_hex(16)
        stdout = oneshot.CappedBuffer(spec.output_limit)
        stderr = oneshot.CappedBuffer(spec.output_limit)
        reader = asyncio.create_task(
            oneshot.capture(
                stream,
                oneshot.StreamTail(stdout, nonce, trailer=False),
                oneshot.StreamTail(stderr, nonce, trailer=True),
            )
        )
        trailer: oneshot.Trailer | None = None
        timed_out = False
        try:
            await stream.write_in(f"{nonce} tar\n".encode() + archive)
            started = time.monotonic()
            done, _ = await asyncio.wait({reader}, timeout=spec.timeout)
            duration = time.monotonic() - started
            if done:
                trailer = reader.result()
            else:
                timed_out = True
                await _kill_quietly(self.rt.docker.containers.container(container_id))
                # The stream ends when the container does; a little grace
                # for the last frames, then whatever arrived is the output.
                await asyncio.wait({reader}, timeout=_DRAIN_GRACE)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        exit_code: int | None = None
        oom_killed = disk_full = False
        if trailer is not None:
            exit_code = trailer.exit_code
            oom_killed = exit_code == 137 and trailer.oom_kills > 0
            disk_full = trailer.free_kib == 0
        elif not timed_out:  # the container stopped before its command was done
            exit_code, oom_killed = await self._stopped(container_id)
        output: oneshot.OutputFile | None = None
        note: str | None = None
        if spec.output_file is not None and not timed_out:  # a timeout answers 504 anyway
            if trailer is None:
                note = f"output file {spec.output_file!r} was lost: the run's container stopped"
            else:
                output, note = await oneshot.open_output(
                    self.rt.runs, container_id, spec.workdir, spec.output_file,
                    spec.output_file_limit,
                )  # fmt: skip
        result = RunResult(
            stdout=stdout.value(),
            stderr=stderr.value(),
            stdout_truncated=stdout.truncated,
            stderr_truncated=stderr.truncated,
            exit_code=exit_code,
            duration=duration,
            timed_out=timed_out,
            oom_killed=oom_killed,
            output_note=note,
            disk_full=disk_full,
        )
        return result, output

    async def _stopped(self, container_id: str) -> tuple[int | None, bool]:
        """Exit code and OOM kill of a container whose wrapper itself ended."""
        container = self.rt.runs.containers.container(container_id)
        try:
            async with asyncio.timeout(_WAIT_GRACE):
                status = await container.wait()
        except TimeoutError:
            return None, False
        exit_code = int(status.get("StatusCode", -1))
        state = (await container.show()).get("State") or {}
        return exit_code, exit_code == 137 and bool(state.get("OOMKilled"))

    async def _discard(self, container_id: str, stream: Stream | None) -> None:
        try:
            if stream is not None:
                await stream.close()
        except Exception:  # the stream is done with either way
            log.debug("closing the attach stream of %s failed", container_id, exc_info=True)
        try:
            await self.rt.remove(container_id)
        except Exception:
            # Left for the start-up sweep of this instance's minions.
            log.warning("could not remove minion container %s", container_id, exc_info=True)


async def _kill_quietly(container: DockerContainer) -> None:
    try:
        await container.kill()
    except aiodocker.DockerError as exc:
        if exc.status not in (404, 409):  # gone or already stopped: done
            raise
