"""`herder daemon attach` driven through a pseudo-terminal: raw mode, local
echo, Enter as \\n, Ctrl-] detaches, the terminal is restored."""

from __future__ import annotations

import asyncio
import os
import pty
import sys
import termios
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

ROOT = Path(__file__).resolve().parent.parent
HERDER = [sys.executable, "-m", "herder"]
SEEN: web.AppKey[list[bytes]] = web.AppKey("seen")


def stdio_service() -> web.Application:
    """Stands in for the herder's attach route: a 'daemon' that answers each
    line it reads on stdin with `got: <line>` on stdout (no TTY, no echo)."""
    app = web.Application()
    seen: list[bytes] = []
    app[SEEN] = seen

    async def attach(request: web.Request) -> web.WebSocketResponse:
        assert request.headers["Authorization"] == "Bearer tok"
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_bytes(b"recent output\n")
        buffer = b""
        async for msg in ws:
            if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                seen.append(data)
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    await ws.send_bytes(b"got: " + line + b"\n")
        return ws

    app.router.add_get("/daemon/v1/attach/{name}", attach)
    return app


async def _read_until(master: int, wanted: bytes, seen: bytearray, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        while wanted not in seen:
            ready = asyncio.Event()
            loop.add_reader(master, ready.set)
            try:
                await ready.wait()
            finally:
                loop.remove_reader(master)
            try:
                seen += os.read(master, 4096)
            except OSError:
                raise AssertionError(
                    f"terminal closed before {wanted!r}: {bytes(seen)!r}"
                ) from None


async def test_attach_through_a_pty(aiohttp_server: Any) -> None:
    server = await aiohttp_server(stdio_service())
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERDER_")}
    env.update({"HERDER_URL": str(server.make_url("")).rstrip("/"), "HERDER_TOKEN": "tok"})
    proc = await asyncio.create_subprocess_exec(
        *HERDER, "daemon", "attach", "web",
        stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT,
    )  # fmt: skip
    seen = bytearray()
    try:
        await _read_until(master, b"Ctrl-] detaches", seen)
        await _read_until(master, b"recent output\r\n", seen)
        os.write(master, b"echo hi\r")  # Enter sends \r on a terminal
        await _read_until(master, b"got: echo hi\r\n", seen)
        assert b"echo hi\r\n" in seen  # echoed locally as typed
        os.write(master, b"\x03")  # Ctrl-C goes to the daemon, the client stays
        os.write(master, b"x\x1d")  # Ctrl-] detaches
        await _read_until(master, b"detached from web", seen)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert termios.tcgetattr(slave) == before  # the terminal is restored
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)
        os.close(slave)
    sent = b"".join(server.app[SEEN])
    assert sent == b"echo hi\n\x03x"


async def test_attach_from_a_pipe_leaves_when_output_is_quiet(aiohttp_server: Any) -> None:
    server = await aiohttp_server(stdio_service())
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERDER_")}
    env.update({"HERDER_URL": str(server.make_url("")).rstrip("/"), "HERDER_TOKEN": "tok"})
    proc = await asyncio.create_subprocess_exec(
        *HERDER, "daemon", "attach", "web",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(b"one\ntwo\n"), 30)
    assert proc.returncode == 0, err
    assert out == b"recent output\ngot: one\ngot: two\n"
