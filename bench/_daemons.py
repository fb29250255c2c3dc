"""Daemons in a benchmark herder (`bench._herder.running_herder`), spawned
and killed through its HTTP API."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from bench._herder import Herder

# Daemon ports are published on the loopback only (read by `herder serve`).
os.environ.setdefault("HERDER_DAEMON_BIND_ADDRESS", "127.0.0.1")


@dataclass(frozen=True)
class Daemon:
    name: str  # the container name
    address: str
    ports: dict[str, int]


@asynccontextmanager
async def running_daemon(
    herder: Herder, image: str, ports: tuple[int, ...] = ()
) -> AsyncIterator[Daemon]:
    """A daemon of `image`, killed (and its volume wiped) on exit."""
    headers = {"Authorization": f"Bearer {herder.token}"}
    form = {"name": f"bench{secrets.token_hex(3)}", "image": image, "ports": json.dumps(ports)}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(f"{herder.url}/daemon/v1/spawn", data=form) as resp:
            if resp.status != 200:
                raise SystemExit(f"spawn failed: {resp.status} {await resp.text()}")
            reply = await resp.json()
        try:
            yield Daemon(reply["Name"], reply["Address"], reply["Ports"])
        finally:
            url = f"{herder.url}/daemon/v1/kill/{reply['Name']}?wipe=true"
            async with session.get(url) as resp:
                await resp.read()


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
