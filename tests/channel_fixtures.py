"""The channels' test parts: the real Redis (scripts/ensure-redis), a prefix
of the test's own, herders listening on it, and a client that collects
every answer published under the prefix."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from herder.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, load_keypair

REDIS_URL = os.environ.get("HERDER_TEST_REDIS_URL", "redis://127.0.0.1:6391/0")
_prefixes = iter(range(10**6))


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """The real Redis. Fails (never skips) when there is none."""
    client = Redis.from_url(REDIS_URL, protocol=2)
    try:
        await client.ping()
    except Exception as exc:  # pragma: no cover - the failure is the message
        await client.aclose()
        pytest.fail(f"no Redis answers at {REDIS_URL} ({exc}); run scripts/ensure-redis")
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: Redis) -> AsyncIterator[str]:
    """A channel prefix of this test's own; its keys are deleted afterwards."""
    from .conftest import INSTANCE_PREFIX

    name = f"{INSTANCE_PREFIX}ch{next(_prefixes)}".replace("-", "_")
    yield name
    keys = [k async for k in redis.scan_iter(match=f"{name}.*", count=1000)]
    if keys:
        await redis.delete(*keys)


async def wait_listening(redis: Redis, prefix: str, herders: int = 1) -> None:
    """Until `herders` herders have subscribed to the prefix's channels
    (a message published before that is heard by no one)."""
    deadline = time.monotonic() + 30
    channels = [f"{prefix}.{verb}" for verb in ("create", "status", "remove")]
    while True:
        counts = dict(await redis.pubsub_numsub(*channels))
        if all(counts.get(c.encode(), 0) >= herders for c in channels):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{herders} herders did not subscribe to {prefix} ({counts})")
        await asyncio.sleep(0.05)


class Answers:
    """Every answer published under a prefix, per channel, in order."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.got: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.failed: BaseException | None = None

    async def __aenter__(self) -> Answers:
        self._pubsub = self.redis.pubsub()
        await self._pubsub.psubscribe(f"{self.prefix}.*.*")
        self._task = asyncio.create_task(self._collect())
        return self

    async def _collect(self) -> None:
        try:
            await self._listen()
        except BaseException as exc:
            self.failed = exc
            self._changed.set()
            raise

    async def _listen(self) -> None:
        async for message in self._pubsub.listen():
            if message["type"] != "pmessage":
                continue
            channel = message["channel"].decode()
            if channel.startswith(f"{self.prefix}.alive."):
                continue
            self.got[channel].append(json.loads(message["data"]))
            self._changed.set()

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._pubsub.aclose()

    def of(self, verb: str, request_id: str) -> list[dict[str, Any]]:
        return self.got.get(f"{self.prefix}.{verb}.{request_id}", [])

    async def wait(self, verb: str, ids: list[str], timeout: float = 60.0) -> None:
        """Until each of `ids` has an answer."""
        deadline = time.monotonic() + timeout
        while True:
            if self.failed is not None:
                pytest.fail(f"the answers' subscription failed: {self.failed!r}")
            missing = [i for i in ids if not self.of(verb, i)]
            if not missing:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"{len(missing)} of {len(ids)} {verb} requests got no answer")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))


def share_keys(source: Path, *targets: Path) -> None:
    """Herders that honour each other's tokens share one key pair."""
    load_keypair(source)
    for target in targets:
        target.mkdir(parents=True, exist_ok=True)
        for name in (PRIVATE_KEY_FILE, PUBLIC_KEY_FILE):
            shutil.copy2(source / name, target / name)


def dropped(metrics_text: str, reason: str) -> float:
    match = re.search(
        rf'herder_channel_dropped_total{{reason="{reason}"}} ([0-9.e+]+)', metrics_text
    )
    return float(match.group(1)) if match else 0.0


def daemon_containers(subject: str) -> list[str]:
    """Names of the subject's daemon containers, whichever herder made them."""
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", "label=herder.kind=daemon",
         "--filter", f"label=herder.subject={subject}", "--format", "{{.Names}}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sorted(out.split())


def remove_daemons(subject: str) -> None:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=herder.kind=daemon",
         "--filter", f"label=herder.subject={subject}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for start in range(0, len(out), 50):
        subprocess.run(["docker", "rm", "-f", *out[start : start + 50]], capture_output=True)
