"""The warm pool across an engine restart, on a private Docker Engine of its
own (own socket, data root, containerd and network namespace, no bridge, no
iptables), so the shared engine is never restarted: the waiting containers
the restart stopped are dropped and removed, and the pool fills again with
new ones."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

import herder.pool
from herder.pool import LABEL_POOL, MinionPool
from herder.runtime import DockerRuntime, RunSpec

from .conftest import INSTANCE_PREFIX, eventually
from .images import BUSYBOX_IMAGE, ensure_busybox_image

pytestmark = pytest.mark.docker


class PrivateEngine:
    """A `dockerd` in a temporary directory, started and restarted here."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with (self.root / "dockerd.log").open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                # In a network namespace of its own: a dockerd with
                # --bridge=none deletes the docker0 of the namespace it runs in
                # (the shared engine's bridge, were it the host's).
                "unshare", "--net",
                "dockerd",
                "--host", self.url,
                "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "docker.pid"),
                "--bridge=none", "--iptables=false", "--ip6tables=false",
                "--ip-masq=false", "--userland-proxy=false",
                stdout=log,
                stderr=log,
            )  # fmt: skip
        connector = aiohttp.UnixConnector(path=str(self.socket))
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(300):
                if self.process.returncode is not None:
                    pytest.fail(f"dockerd exited: {(self.root / 'dockerd.log').read_text()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get("http://engine/_ping") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        pytest.fail("the private dockerd did not answer within 30 s")

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(60):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()

    async def load(self, image: str) -> None:
        """`image` from the shared engine into this one (`docker save | docker load`)."""
        pipeline = f"set -e -o pipefail; docker save {image} | docker -H {self.url} load -q"
        load = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            pipeline,
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
        )
        _, err = await load.communicate()
        assert load.returncode == 0, err


@pytest.fixture
async def engine() -> AsyncIterator[PrivateEngine]:
    await ensure_busybox_image()
    # A short path: a unix socket's path has at most 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="herder-engine-", dir="/tmp"))
    private = PrivateEngine(root)
    try:
        await private.start()
        await private.load(BUSYBOX_IMAGE)
        yield private
    finally:
        await private.stop()  # stops its containers; its containerd goes with it
        shutil.rmtree(root, ignore_errors=True)


async def test_an_engine_restart_refills_the_pool(
    engine: PrivateEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(herder.pool, "CHECK_INTERVAL", 0.5)
    monkeypatch.setattr(herder.pool, "RETRY_DELAY", 0.5)
    runtime = DockerRuntime(engine.url)
    spec = RunSpec(image=BUSYBOX_IMAGE, files={}, labels={}, cmd=["sleep", "600"])
    pool = MinionPool(runtime, {"busy": 2}, lambda env: spec, f"{INSTANCE_PREFIX}engine")

    async def waiting() -> set[str]:
        running = await runtime.list(pool.labels("busy"), all=False)
        return {c.id for c in running if LABEL_POOL in c.labels}

    async def filled() -> bool:
        return pool.ready("busy") == 2 and len(await waiting()) == 2

    try:
        await pool.start()
        await eventually(filled, timeout=60, what="the pool did not fill")
        before = await waiting()
        await engine.stop()  # the engine stops every container as it goes
        await engine.start()
        assert not await waiting() & before  # stopped by the restart

        async def refilled() -> bool:
            now = await waiting()
            return pool.ready("busy") == 2 and len(now) == 2 and not now & before

        await eventually(refilled, timeout=60, what="the pool did not fill again")
        # The stopped ones are removed, not left behind.
        left = {c.id for c in await runtime.list(pool.labels("busy"))}
        assert left == await waiting()
        await pool.close()  # and shutdown removes the waiting ones
        assert await runtime.list(pool.labels("busy")) == []
    finally:
        await pool.close()
        await runtime.close()
