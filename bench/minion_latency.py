"""Median round trip of `print(1)` in the python env through a herder with a
warm pool, through one without, and `docker run --rm` of the same image and
script, the three alternated.

    python bench/minion_latency.py [-n 20] [--pool 2]

Prints the three medians and the ratios to `docker run --rm` (targets:
pooled <= 0.30, cold no slower than before the pool: 0.75).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _herder import docker_run, herder_run, running_herder, wait_pool  # noqa: E402


def _line(name: str, times: list[float]) -> str:
    return (
        f"{name:<14} median {statistics.median(times) * 1000:7.1f} ms  "
        f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})"
    )


async def main(runs: int, warmup: int, pool: int) -> tuple[float, float]:
    async with (
        running_herder(minion_pool=f"python={pool}") as pooled,
        running_herder(minion_pool="0") as cold,
        aiohttp.ClientSession() as session,
    ):

        async def pooled_run() -> float:
            await wait_pool(session, pooled, pool)  # refilled while the others ran
            return await herder_run(session, pooled)

        async def cold_run() -> float:
            return await herder_run(session, cold)

        sides: list[tuple[str, Callable[[], Awaitable[float]]]] = [
            ("herder pooled", pooled_run),
            ("herder cold", cold_run),
            ("docker run", docker_run),
        ]
        for _ in range(warmup):
            for _, run in sides:
                await run()
        times: dict[str, list[float]] = {name: [] for name, _ in sides}
        for i in range(runs):
            # Rotate which goes first, so drift hurts none of them.
            for name, run in sides[i % 3 :] + sides[: i % 3]:
                times[name].append(await run())
    docker = statistics.median(times["docker run"])
    p = statistics.median(times["herder pooled"]) / docker
    c = statistics.median(times["herder cold"]) / docker
    print(f"runs: {runs} each, rotated ({warmup} warm-up each); pool python={pool}")
    print(f"load average before: {LOAD}, after: {os.getloadavg()[0]:.2f}")
    for name, _ in sides:
        print(_line(name, times[name]))
    print(f"ratio pooled/docker: {p:.3f}  (target <= 0.30)")
    print(f"ratio cold/docker:   {c:.3f}  (target: no slower than before the pool, 0.75)")
    return p, c


LOAD = f"{os.getloadavg()[0]:.2f}"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pool", type=int, default=2, help="size of the python pool")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.warmup, args.pool))
