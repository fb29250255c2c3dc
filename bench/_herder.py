"""Shared by the benchmarks: a herder subprocess on a free port with a temp
data dir and a token, and the `docker run --rm` twin of a minion."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "herder/python:bookworm"
SCRIPT = "print(1)"
MAIN_SH = "exec python3 main.py\n"


@dataclass(frozen=True)
class Herder:
    url: str
    token: str
    pid: int | None = None  # of `herder serve`, when this run started it


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds process `pid` has used (Linux)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _herder_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "herder", *args]


def _start(
    data_dir: str, port: int, settings: dict[str, str]
) -> tuple[str, subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "HERDER_DATA_DIR": data_dir,
        "HERDER_LOG_FORMAT": "text",
        "PYTHONPATH": str(ROOT),
        **settings,
    }
    created = subprocess.run(
        _herder_cmd("token", "create", "-e", "bench@example.org", "-c", "100000000"),
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    token = created.stdout.strip().splitlines()[-1]
    server = subprocess.Popen(
        _herder_cmd("serve", "--host", "127.0.0.1", "--port", str(port)),
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return token, server


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@asynccontextmanager
async def running_herder(**settings: str) -> AsyncIterator[Herder]:
    """`herder serve` in a subprocess with its own data dir, and a token for
    it; `settings` are `HERDER_*` variables (`MINION_POOL="python=2"`)."""
    env = {f"HERDER_{name.upper()}": value for name, value in settings.items()}
    with tempfile.TemporaryDirectory(prefix="herder-bench-") as data_dir:
        port = _free_port()
        token, server = await asyncio.to_thread(_start, data_dir, port, env)
        url = f"http://127.0.0.1:{port}"
        try:
            await _wait_ready(url, server)
            yield Herder(url, token, server.pid)
        finally:
            await asyncio.to_thread(_stop, server)


async def _wait_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit("the herder exited during start-up")
            try:
                async with session.get(url + "/healthz") as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("the herder did not answer within 30 s")


async def herder_run(session: aiohttp.ClientSession, herder: Herder) -> float:
    """Seconds for one `print(1)` minion through the herder's HTTP API."""
    started = time.perf_counter()
    async with session.post(
        herder.url + "/minion/v1/spawn",
        data={"env": "python", "main.sh": MAIN_SH, "main.py": SCRIPT},
        headers={"Authorization": f"Bearer {herder.token}"},
    ) as resp:
        body = await resp.json()
    elapsed = time.perf_counter() - started
    if resp.status != 200 or body.get("StdOut") != "1\n":
        raise SystemExit(f"herder run failed: {resp.status} {body}")
    return elapsed


async def pool_ready(session: aiohttp.ClientSession, herder: Herder, env: str = "python") -> int:
    """Waiting containers of `env`'s pool, as `/node/v1/specs` shows them."""
    async with session.get(herder.url + "/node/v1/specs") as resp:
        specs = await resp.json()
    ready: int = (specs.get("Pool") or {}).get(env, {}).get("Ready", 0)
    return ready


async def wait_pool(
    session: aiohttp.ClientSession, herder: Herder, size: int, env: str = "python"
) -> None:
    """Until `size` containers of `env`'s pool wait (at most 120 s)."""
    deadline = time.monotonic() + 120
    while await pool_ready(session, herder, env) < size:
        if time.monotonic() > deadline:
            raise SystemExit(f"the pool did not fill to {size} within 120 s")
        await asyncio.sleep(0.2)


def docker_run_args() -> list[str]:
    """`docker run --rm` of the same image and script, with the limits a
    minion gets (so both do the same work; `--network none` is also what
    spares a minion the bridge set-up)."""
    return [
        "docker", "run", "--rm",
        "--network", "none",
        "--memory", "256m", "--memory-swap", "256m",
        "--cpus", "1", "--pids-limit", "128",
        "--ulimit", "nofile=1024:1024",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--user", "1000:1000", "--init", "--read-only",
        "--tmpfs", "/tmp:rw,nosuid,nodev,size=67108864",
        "-v", "/minion", "-w", "/minion",
        "--log-opt", "max-size=2097152", "--log-opt", "max-file=1",
        "--label", "herder.bench=1",
        IMAGE, "python3", "-c", SCRIPT,
    ]  # fmt: skip


async def docker_run() -> float:
    """Seconds for one `docker run --rm` of the same image and script."""
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *docker_run_args(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0 or out != b"1\n":
        raise SystemExit(f"docker run failed: {proc.returncode} {err.decode()[:300]}")
    return elapsed
