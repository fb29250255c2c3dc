"""Minions under overload and with big outputs: admission control (200 at
once give only 200s and 429s), output files streamed with the herder's
memory flat, and a capped /minion that keeps a run's bytes off the host's
disk. Against the real engine, real HTTP and a real `herder serve`."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from herder.app import create_app
from herder.settings import Settings
from herder.signing import load_keypair
from herder.tokens import TokenService

from .conftest import auth, make_settings, session_containers

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parent.parent


def _token(settings: Settings, credits: int) -> str:
    service = TokenService(load_keypair(settings.data_dir), settings, None)  # type: ignore[arg-type]
    token, _ = service.create("limits@example.org", credits, 1)
    return token


def _form(script: str, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("env", "python")
    form.add_field("main.sh", script)
    for name, value in fields.items():
        form.add_field(name, value)
    return form


async def _metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not in /metrics")


async def test_two_hundred_minions_at_once_get_only_200_and_429(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    """More runs than slots wait (and their wait is not counted in their 5 s
    timeout); more than the queue holds are refused at once with Retry-After."""
    settings = make_settings(
        tmp_path / "data", minion_concurrency="2", minion_queue="30", minion_timeout="5"
    )
    server = await aiohttp_server(create_app(settings))
    url = str(server.make_url("")).rstrip("/")
    token = _token(settings, 100000)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def spawn() -> tuple[int, dict[str, Any], str | None]:
            async with session.post(
                url + "/minion/v1/spawn", data=_form("echo ok\n"), headers=auth(token)
            ) as resp:
                return resp.status, await resp.json(), resp.headers.get("Retry-After")

        results = await asyncio.gather(*(spawn() for _ in range(200)))
        statuses = Counter(status for status, _, _ in results)
        assert set(statuses) <= {200, 429}, statuses
        # Two run and thirty wait: at least those 32 are served, the rest refused.
        assert statuses[200] >= 32 and statuses[429] >= 100, statuses
        for status, body, retry_after in results:
            if status == 200:
                assert body["StdOut"] == "ok\n" and body["ExitCode"] == 0
            else:
                assert retry_after is not None and int(retry_after) >= 1
                assert "too many minion runs" in body["error"]
        assert await _metric(session, url, "herder_minion_rejected_total") == statuses[429]
        assert await _metric(session, url, "herder_minion_queue_length") == 0
        assert await _metric(session, url, "herder_minion_queue_wait_seconds_count") >= 32
        assert await _metric(session, url, "herder_minion_queue_wait_seconds_sum") > 0


# -- a real `herder serve`: memory as the operating system sees it ----------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _serve(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HERDER_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "herder", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, str, int]]:
    """`herder serve` in a subprocess: its URL, a token, its pid."""
    settings = make_settings(tmp_path / "served")  # an instance id the session sweep knows
    token = _token(settings, 100000)
    port = _free_port()
    proc = await asyncio.to_thread(_serve, settings.data_dir, port)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(url + "/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert proc.poll() is None, "herder serve exited"
                await asyncio.sleep(0.1)
        yield url, token, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_eight_concurrent_60_mib_outputs_keep_the_herders_memory_flat(
    served: tuple[str, str, int],
) -> None:
    url, token, pid = served
    size = 60 << 20
    expected = hashlib.sha256(b"\0" * size).hexdigest()
    before = _rss_bytes(pid)
    peak = before
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, _rss_bytes(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:

        async def download() -> tuple[int, str]:
            script = f"head -c {size} /dev/zero > out.bin\n"
            async with session.post(
                url + "/minion/v1/spawn",
                data=_form(script, output="out.bin"),
                headers=auth(token),
            ) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["X-Minion-Exit-Code"] == "0"
                digest = hashlib.sha256()
                got = 0
                async for chunk in resp.content.iter_chunked(1 << 16):
                    digest.update(chunk)
                    got += len(chunk)
                    await asyncio.sleep(0)  # a client that reads as it goes
                return got, digest.hexdigest()

        try:
            results = await asyncio.gather(*(download() for _ in range(8)))
        finally:
            sampling = False
            await sampler
    assert results == [(size, expected)] * 8
    # Held in memory, the outputs alone would be 480 MiB (RSS rose by 836 MiB before).
    grew = peak - before
    assert grew < 96 << 20, f"RSS grew by {grew >> 20} MiB (from {before >> 20} MiB)"


def _docker_root() -> str:
    out = subprocess.run(
        ["docker", "info", "--format", "{{.DockerRootDir}}"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def _free(path: str) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


async def test_a_two_gib_write_into_minion_fails_cleanly_and_never_reaches_the_disk(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    settings = make_settings(tmp_path / "data", minion_disk_mb="64")
    client = await aiohttp_client(create_app(settings))
    token = _token(settings, 1000)
    root = _docker_root()
    before = _free(root)
    lowest = before
    sampling = True

    async def sample() -> None:
        nonlocal lowest
        while sampling:
            lowest = min(lowest, _free(root))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    # Held full for a moment, so the sampler sees the disk while the bytes are there.
    script = "dd if=/dev/zero of=/minion/big bs=1M count=2048; echo dd=$?; sleep 1\n"
    try:
        resp = await client.post("/minion/v1/spawn", data=_form(script), headers=auth(token))
        body = await resp.json()
    finally:
        sampling = False
        await sampler
    assert resp.status == 200, body
    assert "dd=1" in body["StdOut"]  # dd failed ...
    assert "No space left on device" in body["StdErr"]  # ... for want of room
    assert "/minion is full (MINION_DISK_MB: 64 MiB)" in body["StdErr"]
    assert body["DiskFull"] is True
    # Another helper's image build may take some disk meanwhile, but not the 2 GiB.
    assert before - lowest < 1 << 30, f"the disk lost {(before - lowest) >> 20} MiB"
    await client.close()
    assert session_containers("herder.kind=minion") == []
