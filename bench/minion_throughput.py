"""Throughput of 16 concurrent `print(1)` minions through the herder against
16 parallel `docker run --rm` of the same image and script, rounds alternated.

    python bench/minion_throughput.py [-c 16] [-r 3]

Prints runs per second of each (median over rounds) and their ratio
(target: herder / docker >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _herder import Herder, docker_run, herder_run, running_herder  # noqa: E402


async def herder_batch(session: aiohttp.ClientSession, herder: Herder, n: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(herder_run(session, herder) for _ in range(n)))
    return n / (time.perf_counter() - started)


async def docker_batch(n: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(docker_run() for _ in range(n)))
    return n / (time.perf_counter() - started)


async def main(concurrency: int, rounds: int) -> float:
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with running_herder() as herder, aiohttp.ClientSession(connector=connector) as session:
        await herder_run(session, herder)  # warm-up
        await docker_run()
        herder_rates: list[float] = []
        docker_rates: list[float] = []
        for i in range(rounds):
            if i % 2 == 0:
                herder_rates.append(await herder_batch(session, herder, concurrency))
                docker_rates.append(await docker_batch(concurrency))
            else:
                docker_rates.append(await docker_batch(concurrency))
                herder_rates.append(await herder_batch(session, herder, concurrency))
    h, d = statistics.median(herder_rates), statistics.median(docker_rates)
    print(f"{concurrency} concurrent runs, {rounds} rounds each, alternated")
    print(f"herder  {h:6.2f} runs/s  (rounds: {', '.join(f'{r:.2f}' for r in herder_rates)})")
    print(f"docker  {d:6.2f} runs/s  (rounds: {', '.join(f'{r:.2f}' for r in docker_rates)})")
    print(f"ratio herder/docker: {h / d:.3f}  (target >= 0.9)")
    return h / d


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("-r", "--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.concurrency, args.rounds))
