"""Attach benchmark: MB/s of 100 MB of container output through the
herder's attach WebSocket against `docker logs -f` of the same container.

The daemon (busybox) writes 100 MiB of 1000-character lines each time a
line reaches its stdin, then a marker. Rounds alternate: through attach
(`?binary=1&tail=0`, this process reading the WebSocket), and through
`docker logs -f --since <just before>` (this process reading the CLI's
stdout, triggered by a line sent through a short attach). Target: attach at
least 0.5 of `docker logs -f`. (`docker logs -f` may lose output when the
json-file log rotates, at 10 MB: the sizes printed per round show it.)

    python -m bench.attach [--rounds 3] [--mib 100] [--text]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._daemons import running_daemon  # noqa: E402
from bench._herder import Herder, running_herder  # noqa: E402
from tests.images import ensure_command_image  # noqa: E402

MARKER = b"END-OF-ROUND"
SCRIPT = (
    "l=xxxxxxxxxx; l=$l$l$l$l$l$l$l$l$l$l; l=$l$l$l$l$l$l$l$l$l$l; "
    'while read x; do yes "$l" | head -c $((MIB * 1048576)); echo; echo END-OF-ROUND; done'
)


def attach_url(herder: Herder, name: str, text: bool) -> str:
    mode = "" if text else "&binary=1"
    return f"{herder.url}/daemon/v1/attach/{name}?token={herder.token}&tail=0{mode}"


async def through_attach(herder: Herder, name: str, text: bool) -> tuple[int, float]:
    received, tail = 0, b""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(attach_url(herder, name, text), max_msg_size=0) as ws:
            started = time.perf_counter()
            await ws.send_str("go\n")
            while MARKER not in tail:
                msg = await ws.receive(timeout=120)
                if msg.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    raise SystemExit(f"attach ended early: {msg.type} {msg.data!r}")
                data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                received += len(data)
                tail = (tail + data)[-64:]
            return received, time.perf_counter() - started


async def through_docker_logs(herder: Herder, name: str) -> tuple[int, float]:
    since = f"{time.time():.3f}"
    process = await asyncio.create_subprocess_exec(
        "docker", "logs", "-f", "--since", since, name,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    received, tail = 0, b""
    try:
        async with aiohttp.ClientSession() as session:
            started = time.perf_counter()
            async with session.ws_connect(attach_url(herder, name, False)) as ws:
                await ws.send_str("go\n")
            while MARKER not in tail:
                data = await asyncio.wait_for(process.stdout.read(1 << 20), 120)
                if not data:
                    raise SystemExit("docker logs ended early")
                received += len(data)
                tail = (tail + data)[-64:]
            return received, time.perf_counter() - started
    finally:
        process.kill()
        await process.wait()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--text", action="store_true", help="text frames instead of binary")
    args = parser.parse_args()
    script = SCRIPT.replace("MIB", str(args.mib))
    image = await ensure_command_image(f"herder-test/flood-{args.mib}:1", ["sh", "-c", script])
    results: dict[str, list[float]] = {"attach": [], "docker logs -f": []}
    async with running_herder() as herder, running_daemon(herder, image) as daemon:
        for _ in range(args.rounds):
            size, seconds = await through_attach(herder, daemon.name, args.text)
            results["attach"].append(size / seconds / 1e6)
            print(f"  attach         {size / 1e6:7.1f} MB in {seconds:5.2f}s", flush=True)
            size, seconds = await through_docker_logs(herder, daemon.name)
            results["docker logs -f"].append(size / seconds / 1e6)
            print(f"  docker logs -f {size / 1e6:7.1f} MB in {seconds:5.2f}s", flush=True)
    mode = "text" if args.text else "binary"
    print(f"{args.mib} MiB of output, {args.rounds} rounds each, attach in {mode} frames")
    for kind, rates in results.items():
        print(f"{kind:15}: {sum(rates) / len(rates):7.1f} MB/s  (best {max(rates):.1f})")
    ratio = sum(results["attach"]) / sum(results["docker logs -f"])
    print(f"attach/docker logs: {ratio:.2f} (target >= 0.5)")
    return 0 if ratio >= 0.5 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
