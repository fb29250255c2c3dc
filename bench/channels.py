"""Create-to-reply latency of a daemon through the Redis channels vs the HTTP spawn.

One herder (`herder serve` with `HERDER_REDIS_URL`), the busybox test image,
no ports. Alternately: `POST /daemon/v1/spawn` until its reply, and a
`<prefix>.create` publish until the answer on `<prefix>.create.<id>`; each
daemon is removed (not timed) before the next. Prints the medians side by
side and their ratio (channels / HTTP).

    .venv/bin/python bench/channels.py [ROUNDS]

Redis: `HERDER_REDIS_URL`, else the one `scripts/ensure-redis` starts.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._herder import running_herder  # noqa: E402
from herder.channels.client import call, new_request_id, script  # noqa: E402
from tests.images import ensure_busybox_image  # noqa: E402

PREFIX = f"bench{secrets.token_hex(3)}"


def _redis_url() -> str:
    url = os.environ.get("HERDER_REDIS_URL")
    if url:
        return url
    out = subprocess.run(
        [str(ROOT / "scripts" / "ensure-redis")], check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


async def main(rounds: int) -> None:
    os.environ["HERDER_REDIS_URL"] = _redis_url()
    os.environ["HERDER_CHANNEL_PREFIX"] = PREFIX
    os.environ.setdefault("HERDER_DAEMON_BIND_ADDRESS", "127.0.0.1")
    image = await ensure_busybox_image()
    redis = Redis.from_url(os.environ["HERDER_REDIS_URL"], protocol=2)
    http_times: list[float] = []
    channel_times: list[float] = []
    async with running_herder() as herder:
        headers = {"Authorization": f"Bearer {herder.token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            await _wait_subscribed(redis)
            for n in range(rounds + 1):  # round 0 warms up, not counted
                started = time.perf_counter()
                form = {"name": f"h{n}", "image": image, "ports": "[]"}
                async with session.post(f"{herder.url}/daemon/v1/spawn", data=form) as resp:
                    body = await resp.json()
                    if resp.status != 200:
                        raise SystemExit(f"HTTP spawn failed: {resp.status} {body}")
                elapsed_http = time.perf_counter() - started
                await _kill(session, herder.url, body["Name"])

                started = time.perf_counter()
                payload = {"id": new_request_id(), "script": script(image), "token": herder.token}
                answer = await call(redis, PREFIX, "create", payload, timeout=60)
                elapsed_channel = time.perf_counter() - started
                if "error" in answer:
                    raise SystemExit(f"channel create failed: {answer}")
                await _kill(session, herder.url, answer["id"])
                if n:
                    http_times.append(elapsed_http)
                    channel_times.append(elapsed_channel)
    keys = [k async for k in redis.scan_iter(match=f"{PREFIX}.*", count=1000)]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()
    http, channel = statistics.median(http_times), statistics.median(channel_times)
    print(f"daemon create, {rounds} rounds each, alternated, busybox, no ports")
    print(f"  HTTP spawn       median {http * 1000:7.1f} ms  p90 {_p90(http_times) * 1000:7.1f} ms")
    print(
        f"  Redis channel    median {channel * 1000:7.1f} ms  p90 {_p90(channel_times) * 1000:7.1f} ms"
    )
    print(f"  ratio channel/HTTP {channel / http:.2f}")


def _p90(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.9) - 1)]


async def _kill(session: aiohttp.ClientSession, url: str, name: str) -> None:
    async with session.get(f"{url}/daemon/v1/kill/{name}?wipe=true") as resp:
        if resp.status != 200:
            raise SystemExit(f"kill failed: {resp.status} {await resp.text()}")


async def _wait_subscribed(redis: Redis) -> None:
    for _ in range(300):
        counts = dict(await redis.pubsub_numsub(f"{PREFIX}.create"))
        if counts.get(f"{PREFIX}.create".encode(), 0) >= 1:
            return
        await asyncio.sleep(0.1)
    raise SystemExit("the herder did not subscribe to the channels")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
