"""Median round trip of `print(1)` in the python env: the herder against
`docker run --rm` of the same image and script, runs alternated.

    python bench/minion_latency.py [-n 20]

Prints both medians and their ratio (target: herder / docker <= 1.15).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _herder import docker_run, herder_run, running_herder  # noqa: E402


async def main(runs: int, warmup: int) -> float:
    async with running_herder() as herder, aiohttp.ClientSession() as session:
        for _ in range(warmup):
            await herder_run(session, herder)
            await docker_run()
        herder_times: list[float] = []
        docker_times: list[float] = []
        for i in range(runs):
            # Alternate which goes first, so drift hurts neither side.
            if i % 2 == 0:
                herder_times.append(await herder_run(session, herder))
                docker_times.append(await docker_run())
            else:
                docker_times.append(await docker_run())
                herder_times.append(await herder_run(session, herder))
    h, d = statistics.median(herder_times), statistics.median(docker_times)
    print(f"runs: {runs} each, alternated ({warmup} warm-up each)")
    print(
        f"herder  median {h * 1000:7.1f} ms  (min {min(herder_times) * 1000:.1f}, max {max(herder_times) * 1000:.1f})"
    )
    print(
        f"docker  median {d * 1000:7.1f} ms  (min {min(docker_times) * 1000:.1f}, max {max(docker_times) * 1000:.1f})"
    )
    print(f"ratio herder/docker: {h / d:.3f}  (target <= 1.15)")
    return h / d


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.warmup))
