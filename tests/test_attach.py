"""WS /daemon/v1/attach/{name} against real daemons running `cat`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from herder import attach
from herder.attach import AttachHub, last_lines
from herder.runtime.base import OutputChunk
from herder.settings import Settings

from .conftest import TokenMaker, auth, make_settings
from .daemon_fixtures import Daemons, SpawnedDaemon
from .images import ensure_cat_image

pytestmark = pytest.mark.docker


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    extra = getattr(request, "param", {})
    return make_settings(tmp_path / "data", daemon_bind_address="127.0.0.1", **extra)


@pytest.fixture
async def cat(daemons: Daemons, token: str) -> SpawnedDaemon:
    return await daemons.spawn(token, await ensure_cat_image())


def url(daemon: SpawnedDaemon, token: str, query: str = "") -> str:
    return f"/daemon/v1/attach/{daemon.container_name}?token={token}{query}"


async def read_until(ws: aiohttp.ClientWebSocketResponse, expected: str) -> str:
    """Text frames until `expected` has been seen; returns all text read."""
    seen = ""
    while expected not in seen:
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data, seen)
        seen += msg.data
    return seen


async def test_what_is_sent_comes_back(
    client: TestClient[Any, Any], cat: SpawnedDaemon, token: str
) -> None:
    async with client.ws_connect(url(cat, token)) as ws:
        await ws.send_str("hello daemon\n")
        assert await read_until(ws, "hello daemon\n") == "hello daemon\n"
        await ws.send_bytes(b"invalid \xff utf-8\n")  # binary in, text out: replaced
        assert await read_until(ws, "utf-8\n") == "invalid \ufffd utf-8\n"


async def test_binary_round_trip(
    client: TestClient[Any, Any], cat: SpawnedDaemon, token: str
) -> None:
    payload = bytes(range(256)) * 4
    async with client.ws_connect(url(cat, token, "&binary=1")) as ws:
        await ws.send_bytes(payload)
        got = b""
        while len(got) < len(payload):
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.BINARY
            got += msg.data
    assert got == payload


async def test_replay_of_earlier_output(
    client: TestClient[Any, Any], cat: SpawnedDaemon, token: str
) -> None:
    async with client.ws_connect(url(cat, token)) as ws:
        for i in range(5):
            await ws.send_str(f"line {i}\n")
        await read_until(ws, "line 4\n")
    # A new session: its replay comes from the engine's logs.
    async with client.ws_connect(url(cat, token, "&tail=2")) as ws:
        assert await read_until(ws, "line 4\n") == "line 3\nline 4\n"
        async with client.ws_connect(url(cat, token, "&tail=3")) as second:
            # A shared session: this replay comes from its ring.
            assert await read_until(second, "line 4\n") == "line 2\nline 3\nline 4\n"
    async with client.ws_connect(url(cat, token, "&tail=0")) as ws:
        await ws.send_str("fresh\n")
        assert await read_until(ws, "fresh\n") == "fresh\n"


async def test_two_attachers_both_see_output(
    client: TestClient[Any, Any], cat: SpawnedDaemon, token: str
) -> None:
    async with (
        client.ws_connect(url(cat, token, "&tail=0")) as one,
        client.ws_connect(url(cat, token, "&tail=0")) as two,
    ):
        await one.send_str("from one\n")
        await two.send_str("from two\n")
        for ws in (one, two):
            seen = await read_until(ws, "from two\n")
            assert "from one\n" in seen


async def test_only_the_owner_may_attach(
    client: TestClient[Any, Any], cat: SpawnedDaemon, make_token: TokenMaker, token: str
) -> None:
    for bad, status in ((url(cat, make_token()), 404), (f"/daemon/v1/attach/{cat.name}", 401)):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(bad)
        assert refused.value.status == status
    async with client.get(url(cat, token, "&tail=x")) as resp:
        assert resp.status == 400
        assert "tail" in (await resp.json())["error"]
    async with client.get(url(cat, token)) as resp:  # not a WebSocket
        assert resp.status == 400
    # The plain name works for its owner.
    async with client.ws_connect(f"/daemon/v1/attach/{cat.name}?token={token}") as ws:
        await ws.send_str("by name\n")
        await read_until(ws, "by name\n")


async def test_socket_closes_when_the_daemon_is_killed(
    client: TestClient[Any, Any], daemons: Daemons, cat: SpawnedDaemon, token: str
) -> None:
    async with client.ws_connect(url(cat, token)) as ws:
        await ws.send_str("last words\n")
        await read_until(ws, "last words\n")
        await daemons.kill(cat)
        msg = await ws.receive(timeout=20)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (1001, "daemon stopped")
    with pytest.raises(aiohttp.WSServerHandshakeError) as gone:
        await client.ws_connect(url(cat, token))
    assert gone.value.status == 404


def test_last_lines() -> None:
    chunks = [OutputChunk(1, b"a\nb"), OutputChunk(2, b"\nc\n"), OutputChunk(1, b"d")]
    assert b"".join(c.data for c in last_lines(chunks, 2)) == b"c\nd"
    assert b"".join(c.data for c in last_lines(chunks, 3)) == b"b\nc\nd"
    assert b"".join(c.data for c in last_lines(chunks, 99)) == b"a\nb\nc\nd"
    assert last_lines(chunks, 0) == []
    assert [c.stream for c in last_lines(chunks[:2], 1)] == [2]


class FloodingRuntime:
    """A Runtime whose one container writes output as fast as it is taken."""

    def __init__(self) -> None:
        self.closed = False

    async def attach(self, ref: str) -> FloodingRuntime:
        return self

    async def logs(self, ref: str, **_: Any) -> Any:
        for _ in ():
            yield OutputChunk(1, b"")

    async def read(self) -> OutputChunk | None:
        await asyncio.sleep(0)
        return None if self.closed else OutputChunk(1, b"x" * 1024 + b"\n")

    async def write(self, data: bytes) -> None:
        pass

    async def close(self) -> None:
        self.closed = True

    async def inspect(self, ref: str) -> None:
        return None


async def test_a_slow_client_is_dropped_and_memory_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(attach, "SLOW_CLIENT_GRACE", 0.2)
    hub = AttachHub(FloodingRuntime())  # type: ignore[arg-type]
    session, slow = await hub.join("flood", 0)
    _, fast = await hub.join("flood", 0)
    received = 0
    while not slow.dropped.is_set():
        assert slow.queue.qsize() <= attach.QUEUE_FRAMES
        chunk = await asyncio.wait_for(fast.queue.get(), 5)
        assert chunk is not None
        received += 1
    assert (slow.close_code, slow.close_reason) == attach.CLOSE_SLOW
    assert not fast.dropped.is_set()
    before = received
    for _ in range(3 * attach.QUEUE_FRAMES):  # the fast one goes on
        assert await asyncio.wait_for(fast.queue.get(), 5) is not None
        received += 1
    assert received > before and slow.queue.qsize() <= attach.QUEUE_FRAMES
    await hub.leave(session, slow)
    await hub.leave(session, fast)
    await hub.close()


@pytest.mark.parametrize("settings", [{"streams_per_subject": 2}], indirect=True)
async def test_attach_sockets_past_the_subjects_cap_are_429(
    client: TestClient[Any, Any],
    daemons: Daemons,
    cat: SpawnedDaemon,
    make_token: TokenMaker,
    token: str,
) -> None:
    one = await client.ws_connect(url(cat, token))
    two = await client.ws_connect(url(cat, token))
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(url(cat, token))
    assert refused.value.status == 429
    # Follows and attach sockets count together.
    follow = f"/daemon/v1/logs/{cat.container_name}?follow=1"
    async with client.get(follow, headers=auth(token)) as resp:
        assert resp.status == 429
        assert "at most 2" in (await resp.json())["error"]
    # Another subject is not held up, nor are short calls.
    other = make_token()
    theirs = await daemons.spawn(other, await ensure_cat_image())
    async with client.ws_connect(url(theirs, other)) as ws:
        await ws.send_str("still mine\n")
        await read_until(ws, "still mine\n")
    ls = await asyncio.wait_for(client.get("/daemon/v1/ls", headers=auth(token)), 10)
    assert ls.status == 200
    ls.release()
    # A socket that closes frees its place.
    await one.close()
    async with asyncio.timeout(10):
        while True:
            try:
                again = await client.ws_connect(url(cat, token))
                break
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 429
                await asyncio.sleep(0.1)
    await again.send_str("back\n")
    await read_until(again, "back\n")
    await again.close()
    await two.close()


class SlowAttachRuntime(FloodingRuntime):
    """Attaching to "slow" waits until `release` is set; other containers attach at once."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def attach(self, ref: str) -> FloodingRuntime:
        if ref == "slow":
            await self.release.wait()
        return FloodingRuntime()


async def test_a_slow_attach_holds_up_no_other_container() -> None:
    hub = AttachHub(SlowAttachRuntime())  # type: ignore[arg-type]
    runtime = hub.runtime
    assert isinstance(runtime, SlowAttachRuntime)
    slow = asyncio.create_task(hub.join("slow", 0))
    await asyncio.sleep(0.05)
    assert not slow.done()
    # Joining and leaving another container goes on meanwhile.
    session, subscriber = await asyncio.wait_for(hub.join("fast", 0), 10)
    await asyncio.wait_for(hub.leave(session, subscriber), 10)
    runtime.release.set()
    session, subscriber = await asyncio.wait_for(slow, 10)
    await hub.leave(session, subscriber)
    await hub.close()
