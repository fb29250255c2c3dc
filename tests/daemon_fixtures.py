"""Running daemons for the proxy and attach tests, spawned and killed
through the herder's own routes (`POST /daemon/v1/spawn`, `/daemon/v1/kill`)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from herder.api import keys as appkeys


@dataclass(frozen=True)
class SpawnedDaemon:
    container_name: str
    container_id: str
    address: str
    ports: dict[str, int]  # container port -> host port, in requested order
    name: str
    token: str


class Daemons:
    """Spawns daemons in one test herder and kills them afterwards."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client
        self.made: list[SpawnedDaemon] = []

    async def spawn(
        self, token: str, image: str, *, name: str | None = None, ports: tuple[int, ...] = ()
    ) -> SpawnedDaemon:
        name = name or f"d{secrets.token_hex(3)}"
        form = {"name": name, "image": image, "ports": json.dumps(list(ports))}
        headers = {"Authorization": f"Bearer {token}"}
        async with self.client.post("/daemon/v1/spawn", data=form, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            reply = await resp.json()
        info = await self.client.app[appkeys.RUNTIME].inspect(reply["Name"])
        assert info is not None
        daemon = SpawnedDaemon(
            reply["Name"], info.id, reply["Address"], reply["Ports"], name, token
        )
        self.made.append(daemon)
        return daemon

    async def kill(self, daemon: SpawnedDaemon) -> None:
        headers = {"Authorization": f"Bearer {daemon.token}"}
        url = f"/daemon/v1/kill/{daemon.container_name}?wipe=true"
        async with self.client.get(url, headers=headers) as resp:
            assert resp.status in (200, 404), await resp.text()

    async def kill_named(self, token: str, container_name: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        url = f"/daemon/v1/kill/{container_name}?wipe=true"
        async with self.client.get(url, headers=headers) as resp:
            assert resp.status == 200, await resp.text()

    async def close(self) -> None:
        for daemon in self.made:
            await self.kill(daemon)
            await self.client.app[appkeys.RUNTIME].remove(daemon.container_id)


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
    made = Daemons(client)
    yield made
    await made.close()
