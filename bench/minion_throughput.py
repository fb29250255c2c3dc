"""Throughput of 16 concurrent `print(1)` minions through a herder with a
warm pool sized for them, through one without, and 16 parallel `docker run
--rm` of the same image and script, rounds rotated.

    python bench/minion_throughput.py [-c 16] [-r 3]

Before each pooled round the pool is let fill (a burst that finds it warm);
the herders run with their default `MINION_CONCURRENCY`. Prints runs per
second of each (median over rounds) and the ratios to `docker run --rm`
(targets: pooled >= 2.5; cold no slower than before the pool: 1.18).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _herder import Herder, docker_run, herder_run, running_herder, wait_pool  # noqa: E402


async def herder_batch(session: aiohttp.ClientSession, herder: Herder, n: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(herder_run(session, herder) for _ in range(n)))
    return n / (time.perf_counter() - started)


async def docker_batch(n: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(docker_run() for _ in range(n)))
    return n / (time.perf_counter() - started)


async def main(concurrency: int, rounds: int) -> tuple[float, float]:
    load = os.getloadavg()[0]
    connector = aiohttp.TCPConnector(limit=concurrency * 4)
    async with (
        running_herder(minion_pool=f"python={concurrency}") as pooled,
        running_herder(minion_pool="0") as cold,
        aiohttp.ClientSession(connector=connector) as session,
    ):

        async def pooled_batch() -> float:
            await wait_pool(session, pooled, concurrency)
            return await herder_batch(session, pooled, concurrency)

        async def cold_batch() -> float:
            return await herder_batch(session, cold, concurrency)

        async def docker() -> float:
            return await docker_batch(concurrency)

        sides: list[tuple[str, Callable[[], Awaitable[float]]]] = [
            ("herder pooled", pooled_batch),
            ("herder cold", cold_batch),
            ("docker run", docker),
        ]
        await herder_run(session, pooled)  # warm-up
        await herder_run(session, cold)
        await docker_run()
        rates: dict[str, list[float]] = {name: [] for name, _ in sides}
        for i in range(rounds):
            for name, batch in sides[i % 3 :] + sides[: i % 3]:
                rates[name].append(await batch())
    docker_rate = statistics.median(rates["docker run"])
    p = statistics.median(rates["herder pooled"]) / docker_rate
    c = statistics.median(rates["herder cold"]) / docker_rate
    print(
        f"{concurrency} concurrent runs, {rounds} rounds each, rotated; pool python={concurrency}"
    )
    print(f"load average before: {load:.2f}, after: {os.getloadavg()[0]:.2f}")
    for name, _ in sides:
        rs = rates[name]
        print(
            f"{name:<14} {statistics.median(rs):6.2f} runs/s  "
            f"(rounds: {', '.join(f'{r:.2f}' for r in rs)})"
        )
    print(f"ratio pooled/docker: {p:.3f}  (target >= 2.5)")
    print(f"ratio cold/docker:   {c:.3f}  (target: no slower than before the pool, 1.18)")
    return p, c


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("-r", "--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.concurrency, args.rounds))
