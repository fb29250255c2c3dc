"""Crash recovery: a herder killed with SIGKILL and started again on the same
data dir finds its daemon, meters it again and charges the downtime once."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import pytest

from herder.settings import Settings
from herder.signing import instance_id

from .conftest import TokenMaker, auth, make_settings
from .images import ensure_busybox_image, ensure_cat_image
from .test_daemons import remove_instance_leftovers

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class HerderProcess:
    """`python -m herder serve` as a child process on a data dir."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir, self.log = data_dir, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = os.environ | {
            "HERDER_DATA_DIR": str(self.data_dir),
            "HERDER_HOST": "127.0.0.1",
            "HERDER_PORT": str(self.port),
            "HERDER_DAEMON_BIND_ADDRESS": "127.0.0.1",
            "HERDER_METERING_INTERVAL": "0.5",
            "PYTHONPATH": str(REPO),
        }
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "herder", "serve"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        for _ in range(300):
            assert self.process is not None and self.process.poll() is None, self.log.read_text()
            try:
                async with session.get(self.url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
        pytest.fail("the herder did not start:\n" + self.log.read_text())

    async def spawn(self, session: aiohttp.ClientSession, token: str, name: str, image: str) -> str:
        """Spawn a daemon; its container name."""
        async with session.post(
            self.url + "/daemon/v1/spawn", data={"name": name, "image": image}, headers=auth(token)
        ) as resp:
            assert resp.status == 200, await resp.text()
            container: str = (await resp.json())["Name"]
            return container

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)


@pytest.fixture
def herder(settings: Settings, tmp_path: Path) -> Iterator[HerderProcess]:
    herder = HerderProcess(settings.data_dir, tmp_path / "herder.log")
    yield herder
    herder.kill(signal.SIGTERM)


@pytest.fixture
async def session(docker: aiodocker.Docker, settings: Settings) -> AsyncIterator[Any]:
    async with aiohttp.ClientSession() as session:
        yield session
    await remove_instance_leftovers(docker, instance_id(settings.data_dir))


async def test_sigkill_restart_resumes_metering_and_charges_downtime_once(
    herder: HerderProcess, session: aiohttp.ClientSession, make_token: TokenMaker
) -> None:
    image = await ensure_busybox_image()
    token = make_token(credits=1000)
    herder.start()
    await herder.wait_ready(session)

    async def spent() -> int:
        async with session.get(herder.url + "/token/v1/balance", headers=auth(token)) as resp:
            assert resp.status == 200
            return 1000 - int((await resp.json())["credits"])

    before_spawn = time.time()
    name = await herder.spawn(session, token, "survivor", image)
    after_spawn = time.time()
    await asyncio.sleep(2)
    assert await spent() >= 1

    herder.kill(signal.SIGKILL)
    await asyncio.sleep(6)  # the daemon runs on, unmetered for now
    herder.start()
    await herder.wait_ready(session)

    async with session.get(herder.url + "/daemon/v1/ls", headers=auth(token)) as resp:
        listed = await resp.json()
    assert [(d["Names"], d["State"]) for d in listed] == [(["/" + name], "running")]

    await asyncio.sleep(1.5)  # a few ticks
    checked_from = time.time()
    charged = await spent()
    checked_to = time.time()
    # Every second since the spawn, the downtime included, charged once.
    assert checked_from - after_spawn - 2.5 <= charged <= checked_to - before_spawn + 1.5

    await asyncio.sleep(2)
    assert await spent() >= charged + 1  # metering goes on

    async with session.get(herder.url + f"/daemon/v1/kill/{name}", headers=auth(token)) as resp:
        assert resp.status == 200


async def test_sigterm_ends_follows_and_attaches_and_leaves_daemons_running(
    herder: HerderProcess,
    session: aiohttp.ClientSession,
    make_token: TokenMaker,
    docker: aiodocker.Docker,
) -> None:
    """Shutdown does not wait on clients: a log follow ends, an attach socket
    closes with 1001, the process exits (aiohttp would otherwise wait up to a
    minute per open stream), and the daemon runs on."""
    image = await ensure_cat_image()
    token = make_token(credits=1000)
    herder.start()
    await herder.wait_ready(session)
    name = await herder.spawn(session, token, "stays", image)
    follow = await session.get(herder.url + "/daemon/v1/logs/stays?follow=1", headers=auth(token))
    assert follow.status == 200
    ws = await session.ws_connect(herder.url + "/daemon/v1/attach/stays", headers=auth(token))

    closing = asyncio.ensure_future(ws.receive())  # a client reads all along
    followed = asyncio.ensure_future(follow.read())
    await asyncio.sleep(0.2)
    assert herder.process is not None
    herder.process.send_signal(signal.SIGTERM)
    exit_code = await asyncio.to_thread(herder.process.wait, 40)  # a hang fails here
    assert exit_code == 0, herder.log.read_text()[-3000:]
    assert await followed == b""  # ended, not cut
    message = await asyncio.wait_for(closing, 5)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1001, message
    await ws.close()
    follow.release()
    assert (await (await docker.containers.get(name)).show())["State"]["Running"]
    assert "Traceback" not in herder.log.read_text()
    assert "event loop: uvloop" in herder.log.read_text()  # the default of `herder serve`
