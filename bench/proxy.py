"""Proxy benchmark: a small GET through the herder's proxy vs the same
upstream reached directly on its published port.

Same client, same run: 64 concurrent connections (one aiohttp session each
way, keep-alive), rounds alternated direct/proxy. Prints requests per
second and p50/p99 latency of each side by side, the ratio, the CPU time
`herder serve` spent per proxied request, the event loop the herder serves
on (`HERDER_UVLOOP`) and the machine's load average (the figures are only
comparable on an idle machine). Target: proxy
throughput at least 0.8 of direct.

    python -m bench.proxy [--rounds 3] [--seconds 5]

Needs Docker and the echo image (`herder-test/echo:1`, built by the tests
or here). All traffic stays on this machine; the loops are bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._daemons import running_daemon, wait_http  # noqa: E402
from bench._herder import cpu_seconds, running_herder  # noqa: E402
from tests.images import ensure_echo_image  # noqa: E402

CONCURRENCY = 64
TARGET = 0.8


async def round_of(url: str, seconds: float) -> tuple[int, list[float], int]:
    """Requests done, their latencies (s), errors, for `seconds` at 64 connections."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        if resp.status != 200:
                            errors += 1
                            continue
                except aiohttp.ClientError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return len(latencies), latencies, errors


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    image = await ensure_echo_image()
    load = os.getloadavg()[0]
    async with running_herder() as herder, running_daemon(herder, image, (8080,)) as daemon:
        direct = f"http://127.0.0.1:{daemon.ports['8080']}/small"
        proxied = f"{herder.url}/daemon/v1/proxy/{daemon.name}/small"
        await wait_http(direct)
        await wait_http(proxied)
        await round_of(direct, 1.0)  # warm-up both ways
        await round_of(proxied, 1.0)
        totals: dict[str, list[float]] = {"direct": [], "proxy": []}
        counts = {"direct": 0, "proxy": 0}
        errors = {"direct": 0, "proxy": 0}
        elapsed = {"direct": 0.0, "proxy": 0.0}
        herder_cpu = [0.0, 0.0]  # user, system seconds of `herder serve` in proxy rounds
        for _ in range(args.rounds):
            for kind, url in (("direct", direct), ("proxy", proxied)):
                started = time.monotonic()
                cpu_before = cpu_seconds(herder.pid) if herder.pid else (0.0, 0.0)
                done, latencies, failed = await round_of(url, args.seconds)
                elapsed[kind] += time.monotonic() - started
                if kind == "proxy" and herder.pid:
                    cpu_after = cpu_seconds(herder.pid)
                    herder_cpu[0] += cpu_after[0] - cpu_before[0]
                    herder_cpu[1] += cpu_after[1] - cpu_before[1]
                counts[kind] += done
                errors[kind] += failed
                totals[kind] += latencies
                print(f"  {kind:6} round: {done / args.seconds:8.0f} req/s", flush=True)
    rps = {k: counts[k] / elapsed[k] for k in counts}
    uvloop = os.environ.get("HERDER_UVLOOP", "true").lower() not in ("0", "false", "no", "off")
    print(
        f"small GET, {CONCURRENCY} connections, {args.rounds} x {args.seconds:g}s each way; "
        f"herder on {'uvloop' if uvloop else 'asyncio'}; load {load:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    for kind in ("direct", "proxy"):
        print(
            f"{kind:6}: {rps[kind]:8.0f} req/s  p50 {percentile(totals[kind], 50) * 1000:6.2f} ms"
            f"  p99 {percentile(totals[kind], 99) * 1000:6.2f} ms  errors {errors[kind]}"
            f"  (mean {statistics.fmean(totals[kind]) * 1000:.2f} ms)"
        )
    per_request = [seconds * 1e6 / max(1, counts["proxy"]) for seconds in herder_cpu]
    print(
        f"herder CPU per proxied request: {sum(per_request):.0f} us "
        f"(user {per_request[0]:.0f}, system {per_request[1]:.0f})"
    )
    ratio = rps["proxy"] / rps["direct"]
    print(f"proxy/direct throughput: {ratio:.2f} (target >= {TARGET})")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
