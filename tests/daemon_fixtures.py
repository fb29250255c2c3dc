"""Running daemons for the proxy and attach tests.

Until the spawn route exists, a daemon is made as the daemons module will
make it: a container started through `DockerRuntime.run_service` with the
herder's labels, plus a `running` row in the workload registry. Everything
made is removed (container and row closed) when the test ends.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import insert, update

from herder import appkeys
from herder.ledger import Workload
from herder.runtime.base import ServiceSpec


@dataclass(frozen=True)
class SpawnedDaemon:
    container_name: str
    container_id: str
    address: str
    ports: dict[str, int]  # container port -> host port, in requested order
    subject: str
    name: str


class Daemons:
    """Spawns daemons for one test app and removes them afterwards."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.made: list[SpawnedDaemon] = []

    async def spawn(
        self,
        token: str,
        image: str,
        *,
        name: str | None = None,
        ports: tuple[int, ...] = (),
        cmd: tuple[str, ...] | None = None,
    ) -> SpawnedDaemon:
        claims = self.app[appkeys.TOKENS].decode(token)
        name = name or f"d{secrets.token_hex(3)}"
        container_name = f"{name}-{claims.jti}"
        instance = self.app[appkeys.INSTANCE]
        labels = {
            "herder.managed": "1",
            "herder.kind": "daemon",
            "herder.subject": claims.sub,
            "herder.jti": claims.jti,
            "herder.name": name,
            "herder.instance": instance,
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
        info = await self.app[appkeys.RUNTIME].run_service(spec)
        ordered = {str(p): info.ports[str(p)] for p in ports}
        daemon = SpawnedDaemon(container_name, info.id, info.address, ordered, claims.sub, name)
        self.made.append(daemon)
        now = int(time.time())
        async with self.app[appkeys.LEDGER].write() as conn:
            await conn.execute(
                insert(Workload).values(
                    instance=instance,
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
        return daemon

    async def kill(self, daemon: SpawnedDaemon) -> None:
        """Remove the container and close its registry row, as a kill does."""
        await self.app[appkeys.RUNTIME].remove(daemon.container_id)
        async with self.app[appkeys.LEDGER].write() as conn:
            await conn.execute(
                update(Workload)
                .where(Workload.container_name == daemon.container_name)
                .values(state="stopped", stopped_at=int(time.time()))
            )

    async def close(self) -> None:
        for daemon in self.made:
            await self.app[appkeys.RUNTIME].remove(daemon.container_id)


async def wait_http(url: str, attempts: int = 100) -> None:
    """Wait until something answers HTTP at `url`."""
    async with aiohttp.ClientSession() as session:
        for _ in range(attempts):
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    pytest.fail(f"nothing answered at {url}")


@pytest.fixture
async def daemons(client: TestClient[Any, Any]) -> AsyncIterator[Daemons]:
    made = Daemons(client.app)
    yield made
    await made.close()
