"""A herder in its own process, and daemons in it, for the benchmarks.

The herder runs as `python -m herder serve` on 127.0.0.1 with a temporary
data dir, so it has its own event loop and the benchmark client its own.
Daemons are spawned through `POST /daemon/v1/spawn` when the herder has that
route; otherwise (before the daemons module landed) as it will do it: the
container through the Runtime and a `running` row in the registry.
Everything is removed on exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from sqlalchemy import insert

from herder.ledger import Ledger, Workload
from herder.runtime import DockerRuntime
from herder.runtime.base import ServiceSpec
from herder.settings import Settings
from herder.signing import INSTANCE_FILE, load_keypair
from herder.tokens import TokenService

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Daemon:
    name: str  # the container name
    address: str
    ports: dict[str, int]
    container_id: str


@dataclass
class Herder:
    url: str
    data_dir: Path
    token: str
    instance: str
    runtime: DockerRuntime
    made: list[str]

    async def spawn(
        self, image: str, ports: tuple[int, ...], cmd: tuple[str, ...] | None = None
    ) -> Daemon:
        name = f"bench{secrets.token_hex(3)}"
        async with aiohttp.ClientSession() as session:
            form = {"name": name, "image": image, "ports": json.dumps(list(ports))}
            headers = {"Authorization": f"Bearer {self.token}"}
            async with session.post(
                f"{self.url}/daemon/v1/spawn", data=form, headers=headers
            ) as resp:
                if resp.status == 200 and cmd is None:
                    reply = await resp.json()
                    info = await self.runtime.inspect(reply["Name"])
                    assert info is not None
                    self.made.append(info.id)
                    return Daemon(reply["Name"], reply["Address"], reply["Ports"], info.id)
        return await self._spawn_directly(name, image, ports, cmd)

    async def _spawn_directly(
        self, name: str, image: str, ports: tuple[int, ...], cmd: tuple[str, ...] | None
    ) -> Daemon:
        settings = Settings.load({"data_dir": str(self.data_dir)}, environ={})
        claims = TokenService(load_keypair(self.data_dir), settings, None).decode(self.token)  # type: ignore[arg-type]
        container_name = f"{name}-{claims.jti}"
        labels = {
            "herder.managed": "1",
            "herder.kind": "daemon",
            "herder.subject": claims.sub,
            "herder.jti": claims.jti,
            "herder.name": name,
            "herder.instance": self.instance,
        }
        spec = ServiceSpec(
            name=container_name,
            image=image,
            labels=labels,
            ports=ports,
            bind_address="127.0.0.1",
            cmd=cmd,
            restart="no",
        )
        info = await self.runtime.run_service(spec)
        self.made.append(info.id)
        ordered = {str(p): info.ports[str(p)] for p in ports}
        ledger = await Ledger.open(settings.database_url)
        try:
            now = int(time.time())
            async with ledger.write() as conn:
                await conn.execute(
                    insert(Workload).values(
                        instance=self.instance,
                        kind="daemon",
                        subject=claims.sub,
                        jti=claims.jti,
                        name=name,
                        container_name=container_name,
                        container_id=info.id,
                        image=image,
                        address=info.address,
                        ports=json.dumps(ordered),
                        state="running",
                        metered=False,
                        started_at=now,
                        metered_until=now,
                    )
                )
        finally:
            await ledger.close()
        return Daemon(container_name, info.address, ordered, info.id)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_herder(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HERDER_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    profile = os.environ.get("HERDER_BENCH_PROFILE")  # write a cProfile of the herder there
    wrapper = ["-m", "cProfile", "-o", profile] if profile else []
    with open(os.environ.get("HERDER_BENCH_LOG", os.devnull), "wb") as log:
        return subprocess.Popen(
            [sys.executable, *wrapper, "-m", "herder", "serve"]
            + ["--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=ROOT,
        )


@asynccontextmanager
async def running_herder() -> AsyncIterator[Herder]:
    with tempfile.TemporaryDirectory(prefix="herder-bench-") as tmp:
        data_dir = Path(tmp)
        instance = f"bench-{secrets.token_hex(4)}"
        (data_dir / INSTANCE_FILE).write_text(instance + "\n")
        settings = Settings.load({"data_dir": str(data_dir)}, environ={})
        token, _ = TokenService(load_keypair(data_dir), settings, None).create(  # type: ignore[arg-type]
            "bench@example.org", 10**9, 1
        )
        port = _free_port()
        process = _start_herder(data_dir, port)
        runtime = DockerRuntime(settings.docker_url)
        herder = Herder(f"http://127.0.0.1:{port}", data_dir, token, instance, runtime, [])
        try:
            await _wait_ready(herder.url, process)
            yield herder
        finally:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 15)
            except subprocess.TimeoutExpired:
                process.kill()
            for ref in herder.made:
                await runtime.remove(ref, volumes=True)
            await runtime.close()


async def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            if process.poll() is not None:
                raise SystemExit(f"the herder exited with code {process.returncode}")
            try:
                async with session.get(f"{url}/healthz") as resp:
                    await resp.read()
                    return  # it answers: up (health itself is not what is measured)
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("the herder did not start")


async def wait_http(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    raise SystemExit(f"nothing answered at {url}")
