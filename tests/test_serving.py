"""`herder serve` under hostile clients, as a subprocess with its own
open-files limit: slow clients, slow bodies, forged log lines, tokens in
malformed headers."""

from __future__ import annotations

import asyncio
import collections
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from .conftest import make_settings

HERDER = str(Path(sys.executable).with_name("herder"))
# A JWT-shaped value: whatever its signature, no log line may carry it.
FAKE_TOKEN = "eyJhbGciOiJSUzUxMiJ9.eyJzdWIiOiJsZWFrQGV4YW1wbGUub3JnIn0.c2VjcmV0LXNpZ25hdHVyZQ"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Served:
    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def served(tmp_path: Path, open_files: int, **env: str) -> Iterator[Served]:
    """`herder serve` on a free port with soft and hard RLIMIT_NOFILE of
    `open_files`; its stderr (the log) in a file."""
    settings = make_settings(tmp_path / "data")
    port = free_port()
    log = tmp_path / "serve.log"
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HERDER_DATA_DIR": str(settings.data_dir),
        "HERDER_PORT": str(port),
        "HERDER_HOST": "127.0.0.1",
        **env,
    }

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with log.open("wb") as out:
        proc = subprocess.Popen(
            [HERDER, "serve"], env=environ, stdout=out, stderr=out, preexec_fn=limit
        )
    try:
        deadline = time.monotonic() + 60
        while "Running on" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"herder serve did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)
        yield Served(port, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def raw_exchange(port: int, data: bytes, wait: float = 10) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        async with asyncio.timeout(wait):
            return await reader.read()
    finally:
        writer.close()


async def wait_for_log(served: Served, check: Callable[[str], bool]) -> str:
    for _ in range(100):
        text = served.log()
        if check(text):
            return text
        await asyncio.sleep(0.1)
    return served.log()


async def test_slow_clients_at_a_low_descriptor_limit_do_not_lock_out_a_normal_one(
    tmp_path: Path,
) -> None:
    with served(tmp_path, 1024) as herder:
        # 1,100 clients from one address send half a request head and hang.
        async def open_slow() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
            try:
                async with asyncio.timeout(5):
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", herder.port, local_addr=("127.0.0.2", 0)
                    )
            except (OSError, TimeoutError):
                return None
            writer.write(b"GET /golem/v1/ HTTP/1.1\r\nHost: slow\r\n")
            return reader, writer

        async def answer_of(reader: asyncio.StreamReader) -> bytes:
            try:
                async with asyncio.timeout(2):
                    return await reader.read(64)  # b"" once closed
            except TimeoutError:  # (an OSError too)
                return b"still open"
            except OSError:
                return b""  # reset: closed with our half request unread

        slow = [c for c in await asyncio.gather(*(open_slow() for _ in range(1100))) if c]
        try:
            # A normal client from another address is served, several times.
            timeout = aiohttp.ClientTimeout(total=15)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                for _ in range(5):
                    async with session.get(f"{herder.url}/minion/v1/envs") as resp:
                        assert resp.status == 200, await resp.text()
                        assert "python" in [e["name"] for e in (await resp.json())["envs"]]
            # Those beyond the per-client cap were answered 503 (or reset) at once.
            answers = await asyncio.gather(*(answer_of(reader) for reader, _ in slow))
            log = herder.log()
        finally:
            for _, writer in slow:
                writer.close()
    assert len(slow) == 1100
    assert answers.count(b"still open") == 96, (
        collections.Counter(a[:20] for a in answers),
        log[-3000:],
    )
    assert all(a == b"" or a.startswith(b"HTTP/1.1 503") for a in answers if a != b"still open")
    assert "open files limit: 1024 (hard 1024)" in log
    assert "connections: at most 384, 96 from one address" in log


async def test_a_crlf_path_logs_one_escaped_line(tmp_path: Path) -> None:
    with served(tmp_path, 4096) as herder:
        answer = await raw_exchange(
            herder.port,
            b"GET /x%0D%0AFORGED%20line%1B HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 404")
        log = await wait_for_log(herder, lambda t: "FORGED" in t)
    lines = [line for line in log.splitlines() if "FORGED" in line]
    assert len(lines) == 1, log
    assert "GET /x\\r\\nFORGED line\\x1b 404" in lines[0], lines
    assert not any(line.startswith("FORGED") for line in log.splitlines())


async def test_a_token_in_a_malformed_header_never_reaches_the_log(tmp_path: Path) -> None:
    with served(tmp_path, 4096) as herder:
        bad_value = b"Authorization: Bearer " + FAKE_TOKEN.encode() + b"\x01"
        bad_name = b"X-Bad\x01: Bearer " + FAKE_TOKEN.encode()
        for header in (bad_value, bad_name):
            answer = await raw_exchange(
                herder.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + header + b"\r\n\r\n"
            )
            assert answer.split(b"\r\n", 1)[0].endswith(b"400 Bad Request"), answer
        # and in a path, a query string and a well-formed header, on a real route
        answer = await raw_exchange(
            herder.port,
            b"GET /token/v1/balance/"
            + FAKE_TOKEN.encode()
            + b"?token="
            + FAKE_TOKEN.encode()
            + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAuthorization: Bearer "
            + FAKE_TOKEN.encode()
            + b"\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 404")
        log = await wait_for_log(herder, lambda t: t.count("Error handling request") >= 2)
    assert log.count("Error handling request") == 2, log
    assert "BadHttpMessage (HTTP 400)" in log or "InvalidHeader" in log, log
    signature = FAKE_TOKEN.rsplit(".", 1)[1]
    assert FAKE_TOKEN not in log and signature not in log and "eyJzdWIi" not in log, log
    assert "\\x01" not in log and "X-Bad" not in log, log


async def test_a_byte_a_second_body_is_cut(tmp_path: Path) -> None:
    with served(tmp_path, 4096, HERDER_BODY_RATE_WINDOW="2", HERDER_TOKEN_PASSWORD="pw") as herder:
        reader, writer = await asyncio.open_connection("127.0.0.1", herder.port)
        body = b"password=pw&email=slow%40example.org&credits=1"
        writer.write(
            b"POST /token/v1/generate HTTP/1.1\r\nHost: a\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        answer = b""
        try:
            async with asyncio.timeout(60):
                for byte in body:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    try:
                        async with asyncio.timeout(1):
                            answer += await reader.read(4096)
                    except TimeoutError:
                        continue
                    if answer or reader.at_eof():
                        break
                while not reader.at_eof():
                    answer += await reader.read(4096)
        except (ConnectionError, TimeoutError) as exc:
            pytest.fail(f"the slow body was not answered: {exc!r} after {answer!r}")
        finally:
            writer.close()
        log = await wait_for_log(herder, lambda t: "request body cut" in t)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request body too slow" in answer
    assert "request body cut" in log and "POST /token/v1/generate 408" in log, log
    assert "Traceback" not in log, log
