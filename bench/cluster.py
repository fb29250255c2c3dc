"""The herder on the Swarm lab (scripts/cluster-lab) against the herder on
the local engine, side by side in one run:

- daemon spawn latency (spawn then kill, medians): a Swarm service through a
  lab replica vs a container through a local herder (`HERDER_RUNTIME=docker`);
- minion throughput: concurrent `print(1)` minions spread over the 3 lab
  replicas vs all sent to one replica, rounds alternated.

    python bench/cluster.py [-n 5] [-c 12] [-r 3]

Uses a lab that is up, else brings one up (and takes it down after).
All the lab's nodes share this machine's 2 cores: 3 replicas cannot do 3
times the work here; the figure shows what spreading costs or gains.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _herder import MAIN_SH, SCRIPT, Herder, running_herder  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "scripts" / "cluster-lab"
LOCAL_IMAGE = "herder/python:bookworm"  # on the host and on every lab node


def lab_up() -> tuple[dict[str, str], bool]:
    status = subprocess.run([str(LAB), "status"], capture_output=True, text=True)
    made = status.returncode != 0
    out = status.stdout
    if made:
        out = subprocess.run(
            [str(LAB), "up", "3"], capture_output=True, text=True, check=True
        ).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if line.startswith("HERDER_LAB_"))
    return values, made


async def lab_token(session: aiohttp.ClientSession, url: str, password: str) -> str:
    async with session.post(
        f"{url}/token/v1/generate",
        data={"password": password, "email": "bench@example.org", "credits": "100000000"},
    ) as resp:
        body = await resp.json()
    return str(body["token"])


async def spawn_kill(session: aiohttp.ClientSession, herder: Herder) -> float:
    """Seconds from spawn request to the reply (the daemon running); then kill it."""
    name = f"b{secrets.token_hex(3)}"
    headers = {"Authorization": f"Bearer {herder.token}"}
    started = time.perf_counter()
    async with session.post(
        f"{herder.url}/daemon/v1/spawn",
        data={"name": name, "image": LOCAL_IMAGE, "ports": "[80]", "main.sh": "sleep 600\n"},
        headers=headers,
    ) as resp:
        body = await resp.json()
    elapsed = time.perf_counter() - started
    if resp.status != 200:
        raise SystemExit(f"spawn failed: {resp.status} {body}")
    async with session.post(f"{herder.url}/daemon/v1/kill/{name}", headers=headers) as resp:
        await resp.read()
    return elapsed


async def minion(session: aiohttp.ClientSession, herder: Herder) -> None:
    async with session.post(
        herder.url + "/minion/v1/spawn",
        data={"env": "python", "main.sh": MAIN_SH, "main.py": SCRIPT},
        headers={"Authorization": f"Bearer {herder.token}"},
    ) as resp:
        body = await resp.json()
    if resp.status != 200 or body.get("StdOut") != "1\n":
        raise SystemExit(f"minion failed: {resp.status} {body}")


async def batch(session: aiohttp.ClientSession, herders: list[Herder], n: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(minion(session, herders[i % len(herders)]) for i in range(n)))
    return n / (time.perf_counter() - started)


async def main(spawns: int, concurrency: int, rounds: int) -> None:
    values, made = await asyncio.to_thread(lab_up)
    try:
        urls = values["HERDER_LAB_REPLICAS"].split(",")
        connector = aiohttp.TCPConnector(limit=concurrency * 2)
        async with running_herder() as local, aiohttp.ClientSession(connector=connector) as session:
            token = await lab_token(session, urls[0], values["HERDER_LAB_TOKEN_PASSWORD"])
            replicas = [Herder(url, token) for url in urls]
            await spawn_kill(session, replicas[0])  # warm-up
            await spawn_kill(session, local)
            swarm_s: list[float] = []
            local_s: list[float] = []
            for i in range(spawns):
                pair = [(swarm_s, replicas[i % 3]), (local_s, local)]
                for into, herder in pair if i % 2 == 0 else pair[::-1]:
                    into.append(await spawn_kill(session, herder))
            await batch(session, replicas, len(replicas))  # warm-up
            three: list[float] = []
            one: list[float] = []
            for i in range(rounds):
                order = [(three, replicas), (one, replicas[:1])]
                for into, herders in order if i % 2 == 0 else order[::-1]:
                    into.append(await batch(session, herders, concurrency))
        s, lo = statistics.median(swarm_s), statistics.median(local_s)
        t, o = statistics.median(three), statistics.median(one)
        print(f"daemon spawn, median of {spawns} (spawn reply, daemon running)")
        print(f"  swarm service via a replica  {s * 1000:7.1f} ms")
        print(f"  local container (docker)     {lo * 1000:7.1f} ms")
        print(f"  ratio swarm/local: {s / lo:.2f}")
        print(f"minions: {concurrency} concurrent, {rounds} rounds each, alternated")
        print(f"  3 replicas  {t:6.2f} runs/s  (rounds: {', '.join(f'{r:.2f}' for r in three)})")
        print(f"  1 replica   {o:6.2f} runs/s  (rounds: {', '.join(f'{r:.2f}' for r in one)})")
        print(f"  ratio 3/1: {t / o:.2f}")
    finally:
        if made:
            await asyncio.to_thread(subprocess.run, [str(LAB), "down"], check=False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--spawns", type=int, default=5)
    parser.add_argument("-c", "--concurrency", type=int, default=12)
    parser.add_argument("-r", "--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.spawns, args.concurrency, args.rounds))
