"""The golem/minion WebSocket relay, with plain WebSocket clients on the real app.

These clients play the golem without being one, so the herder runs with
`golem_open_control` (golem-herder's behaviour); the golem's key is tested
with a real golem in test_golems.py."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, WSServerHandshakeError
from aiohttp.test_utils import TestClient

from herder import relay
from herder.api import keys as appkeys
from herder.app import create_app
from herder.relay import QUEUE_BYTES
from herder.settings import Settings

from .conftest import make_settings

WEBSTRATE = "relay-test_1"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data", golem_open_control=True)


async def receive_event(ws: Any, within: float = 5) -> dict[str, Any]:
    msg = await ws.receive(timeout=within)
    assert msg.type == WSMsgType.TEXT, msg
    event: dict[str, Any] = json.loads(msg.data)
    return event


async def expect_closed(ws: Any, within: float = 5) -> Any:
    msg = await ws.receive(timeout=within)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), msg
    return msg


async def test_events_in_order_and_frames_both_ways(client: TestClient[Any, Any]) -> None:
    golem = await client.ws_connect(f"/golem/v1/connect/{WEBSTRATE}")
    minion = await client.ws_connect(f"/minion/v1/connect/{WEBSTRATE}?type=sensor")

    connected = await receive_event(golem)
    assert connected["Event"] == "minion-connected"
    assert connected["Type"] == "sensor"
    minion_id = connected["ID"]
    assert isinstance(minion_id, str) and minion_id
    assert set(connected) == {"Event", "ID", "Type"}

    channel = await client.ws_connect(f"/golem/v1/connect-to/{WEBSTRATE}/{minion_id}")
    assert await receive_event(minion) == {"Event": "golem-connected"}

    # minion -> golem, text and binary, unchanged
    await minion.send_str("héllo {not json}")
    await minion.send_bytes(b"\x00\xffbinary\x00")
    msg = await channel.receive(timeout=5)
    assert (msg.type, msg.data) == (WSMsgType.TEXT, "héllo {not json}")
    msg = await channel.receive(timeout=5)
    assert (msg.type, msg.data) == (WSMsgType.BINARY, b"\x00\xffbinary\x00")

    # golem -> minion, text and binary, unchanged
    await channel.send_str('{"Event":"not-really-an-event"}')
    await channel.send_bytes(bytes(range(256)))
    msg = await minion.receive(timeout=5)
    assert (msg.type, msg.data) == (WSMsgType.TEXT, '{"Event":"not-really-an-event"}')
    msg = await minion.receive(timeout=5)
    assert (msg.type, msg.data) == (WSMsgType.BINARY, bytes(range(256)))

    # the golem closes its data channel: the minion is told and stays connected
    await channel.close()
    assert await receive_event(minion) == {"Event": "golem-disconnected"}

    # the minion leaves: the golem's control socket is told
    await minion.close()
    assert await receive_event(golem) == {"Event": "minion-disconnected", "ID": minion_id}
    await golem.close()


async def test_second_golem_is_409_before_upgrade(client: TestClient[Any, Any]) -> None:
    first = await client.ws_connect(f"/golem/v1/connect/{WEBSTRATE}")
    with pytest.raises(WSServerHandshakeError) as err:
        await client.ws_connect(f"/golem/v1/connect/{WEBSTRATE}")
    assert err.value.status == 409
    resp = await client.get(f"/golem/v1/connect/{WEBSTRATE}")  # plain HTTP: the JSON error
    assert resp.status == 409
    assert "already connected" in (await resp.json())["error"]
    # once the first goes, the webstrate is free again
    await first.close()
    for _ in range(100):
        try:
            again = await client.ws_connect(f"/golem/v1/connect/{WEBSTRATE}")
            break
        except WSServerHandshakeError:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("the webstrate stayed taken after its golem left")
    await again.close()


async def test_minion_without_golem_gets_not_found_and_is_closed(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    settings = make_settings(tmp_path / "d", golem_wait=1, golem_open_control=True)
    client = await aiohttp_client(create_app(settings))
    minion = await client.ws_connect(f"/minion/v1/connect/{WEBSTRATE}?type=x")
    assert await receive_event(minion, within=10) == {
        "Event": "golem-not-found",
        "ID": WEBSTRATE,
    }
    await expect_closed(minion)


async def test_minion_waits_for_a_late_golem(tmp_path: Path, aiohttp_client: Any) -> None:
    settings = make_settings(tmp_path / "d", golem_wait=30, golem_open_control=True)
    client = await aiohttp_client(create_app(settings))
    minion = await client.ws_connect(f"/minion/v1/connect/{WEBSTRATE}")
    await minion.send_str("sent before the golem came")
    await asyncio.sleep(0.2)
    golem = await client.ws_connect(f"/golem/v1/connect/{WEBSTRATE}")
    event = await receive_event(golem)
    assert event["Event"] == "minion-connected" and event["Type"] == ""
    channel = await client.ws_connect(f"/golem/v1/connect-to/{WEBSTRATE}/{event['ID']}")
    assert await receive_event(minion) == {"Event": "golem-connected"}
    msg = await channel.receive(timeout=5)
    assert msg.data == "sent before the golem came"
    await golem.close()
    # the golem went: the minion is told and closed, the channel closed
    assert await receive_event(minion) == {"Event": "golem-disconnected"}
    await expect_closed(minion)
    await expect_closed(channel)


async def test_minion_leaving_closes_the_data_channel(client: TestClient[Any, Any]) -> None:
    golem = await client.ws_connect(f"/golem/v1/connect/{WEBSTRATE}")
    minion = await client.ws_connect(f"/minion/v1/connect/{WEBSTRATE}?type=t")
    minion_id = (await receive_event(golem))["ID"]
    channel = await client.ws_connect(f"/golem/v1/connect-to/{WEBSTRATE}/{minion_id}")
    assert await receive_event(minion) == {"Event": "golem-connected"}
    await minion.close()
    assert await receive_event(channel) == {"Event": "minion-disconnected", "ID": minion_id}
    await expect_closed(channel)
    assert await receive_event(golem) == {"Event": "minion-disconnected", "ID": minion_id}
    await golem.close()


async def test_connect_to_unknown_minion_or_twice(client: TestClient[Any, Any]) -> None:
    golem = await client.ws_connect(f"/golem/v1/connect/{WEBSTRATE}")
    resp = await client.get(f"/golem/v1/connect-to/{WEBSTRATE}/nope")
    assert resp.status == 404
    assert "no minion" in (await resp.json())["error"]
    minion = await client.ws_connect(f"/minion/v1/connect/{WEBSTRATE}")
    minion_id = (await receive_event(golem))["ID"]
    channel = await client.ws_connect(f"/golem/v1/connect-to/{WEBSTRATE}/{minion_id}")
    with pytest.raises(WSServerHandshakeError) as err:
        await client.ws_connect(f"/golem/v1/connect-to/{WEBSTRATE}/{minion_id}")
    assert err.value.status == 409
    for ws in (channel, minion, golem):
        await ws.close()


@pytest.mark.parametrize(
    "path",
    [
        "/golem/v1/connect/bad%20id",
        "/golem/v1/connect/" + "a" * 65,
        "/minion/v1/connect/b%C3%A4d",
        "/golem/v1/connect-to/bad.id/x",
        "/minion/v1/connect/ok?type=%0a",
    ],
)
async def test_bad_relay_input_is_400(client: TestClient[Any, Any], path: str) -> None:
    with pytest.raises(WSServerHandshakeError) as err:
        await client.ws_connect(path)
    assert err.value.status == 400


async def test_slow_reader_is_closed_not_buffered(client: TestClient[Any, Any]) -> None:
    """A data channel that never reads is closed with 1008 once its queue is
    full; the minion is told the golem is gone."""
    golem = await client.ws_connect(f"/golem/v1/connect/{WEBSTRATE}")
    minion = await client.ws_connect(f"/minion/v1/connect/{WEBSTRATE}")
    minion_id = (await receive_event(golem))["ID"]
    channel = await client.ws_connect(f"/golem/v1/connect-to/{WEBSTRATE}/{minion_id}")
    assert await receive_event(minion) == {"Event": "golem-connected"}

    chunk = b"x" * (256 << 10)
    told: dict[str, Any] = {}

    async def watch_minion() -> None:
        told.update(await receive_event(minion, within=60))

    watcher = asyncio.create_task(watch_minion())
    sent = 0
    # Socket buffers hold some megabytes; the queue at most QUEUE_BYTES more.
    while not watcher.done() and sent < 40 * QUEUE_BYTES:
        await minion.send_bytes(chunk)
        sent += len(chunk)
        await asyncio.sleep(0)
    await asyncio.wait_for(watcher, 30)
    assert told == {"Event": "golem-disconnected"}

    received = 0
    while True:
        msg = await channel.receive(timeout=30)
        if msg.type != WSMsgType.BINARY:
            break
        received += len(msg.data)
    assert msg.type == WSMsgType.CLOSE
    assert msg.data == 1008
    assert "queue full" in msg.extra
    assert received < sent
    await minion.close()
    await golem.close()


async def test_shutdown_closes_every_relay_socket(tmp_path: Path, aiohttp_client: Any) -> None:
    client = await aiohttp_client(
        create_app(make_settings(tmp_path / "d", golem_open_control=True))
    )
    golem = await client.ws_connect(f"/golem/v1/connect/{WEBSTRATE}")
    minion = await client.ws_connect(f"/minion/v1/connect/{WEBSTRATE}")
    await receive_event(golem)
    closing = asyncio.create_task(client.server.close())
    msg = await golem.receive(timeout=10)
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
    msg = await minion.receive(timeout=10)
    if msg.type == WSMsgType.TEXT:  # the golem's end may be relayed before the close
        assert json.loads(msg.data) == {"Event": "golem-disconnected"}
        msg = await minion.receive(timeout=10)
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
    await asyncio.wait_for(closing, 30)


def _raw_websocket(host: str, port: int, path: str) -> socket.socket:
    """A WebSocket client that never reads: a tiny receive buffer, no pongs."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    return sock


async def test_peer_that_never_reads_is_cut_after_its_heartbeat_fails(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A minion whose TCP window stays shut keeps its writer stuck in a send;
    once its heartbeat fails the handler ends within CLOSE_TIMEOUT, the
    connection is cut and nothing of it stays in the relay."""
    monkeypatch.setattr(relay, "HEARTBEAT", 0.5)
    monkeypatch.setattr(relay, "CLOSE_TIMEOUT", 0.5)
    registry = client.server.app[appkeys.RELAY]
    golem = await client.ws_connect(f"/golem/v1/connect/{WEBSTRATE}")
    assert client.server.host is not None and client.server.port is not None
    sock = await asyncio.to_thread(
        _raw_websocket,
        client.server.host,
        client.server.port,
        f"/minion/v1/connect/{WEBSTRATE}?type=t",
    )
    try:
        minion_id = (await receive_event(golem))["ID"]
        channel = await client.ws_connect(f"/golem/v1/connect-to/{WEBSTRATE}/{minion_id}")

        async def drain(ws: Any) -> None:  # reading answers the herder's pings
            async for _msg in ws:
                pass

        drains = [asyncio.create_task(drain(ws)) for ws in (golem, channel)]
        for _ in range(6):  # more than the socket buffers hold, less than the queue
            await channel.send_bytes(b"x" * (1 << 20))

        def minion_tasks() -> list[str]:
            return [t.get_name() for t in asyncio.all_tasks() if "minion of" in t.get_name()]

        assert minion_tasks()
        for _ in range(100):
            if not minion_tasks() and len(registry._sockets) == 1:  # the golem's
                break
            await asyncio.sleep(0.1)
        assert minion_tasks() == []
        assert len(registry._sockets) == 1
        assert registry._golems[WEBSTRATE].minions == {}
        for task in drains:
            task.cancel()
        await golem.close()
    finally:
        sock.close()


async def test_buffer_bounds_count_utf8_bytes_not_characters(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Text of emoji weighs four bytes a character: a minion whose early
    frames hold more UTF-8 than the bound is closed, though they hold fewer
    characters than it."""
    monkeypatch.setattr(relay, "QUEUE_BYTES", 1 << 20)
    golem = await client.ws_connect(f"/golem/v1/connect/{WEBSTRATE}")
    minion = await client.ws_connect(f"/minion/v1/connect/{WEBSTRATE}")
    await receive_event(golem)
    text = "\U0001f600" * (100 << 10)  # 400 KiB of UTF-8, 100 Ki characters
    for _ in range(3):  # 1.2 MiB of UTF-8, 300 Ki characters
        await minion.send_str(text)
    msg = await expect_closed(minion)
    assert (msg.data, msg.extra) == (1008, "send queue full: no golem reading")
    await golem.close()


async def test_minions_per_webstrate_are_capped(tmp_path: Path, aiohttp_client: Any) -> None:
    settings = make_settings(
        tmp_path / "d", relay_minions_per_webstrate=2, golem_wait=30, golem_open_control=True
    )
    client = await aiohttp_client(create_app(settings))
    # waiting minions count too: no golem is connected
    first = await client.ws_connect(f"/minion/v1/connect/{WEBSTRATE}")
    second = await client.ws_connect(f"/minion/v1/connect/{WEBSTRATE}")
    with pytest.raises(WSServerHandshakeError) as err:
        await client.ws_connect(f"/minion/v1/connect/{WEBSTRATE}")
    assert err.value.status == 429
    resp = await client.get(f"/minion/v1/connect/{WEBSTRATE}")
    assert resp.status == 429
    assert "2 minions connected" in (await resp.json())["error"]
    other = await client.ws_connect("/minion/v1/connect/another")  # per webstrate
    # once one leaves, its place is free again
    await first.close()
    for _ in range(100):
        try:
            again = await client.ws_connect(f"/minion/v1/connect/{WEBSTRATE}")
            break
        except WSServerHandshakeError:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("the minion's place stayed taken after it left")
    for ws in (second, other, again):
        await ws.close()


async def test_failed_channel_upgrade_keeps_the_early_frames(
    client: TestClient[Any, Any],
) -> None:
    """A data channel whose upgrade fails (a plain GET) is a 400 that the
    minion never hears of; its early frames wait for the next channel."""
    golem = await client.ws_connect(f"/golem/v1/connect/{WEBSTRATE}")
    minion = await client.ws_connect(f"/minion/v1/connect/{WEBSTRATE}")
    minion_id = (await receive_event(golem))["ID"]
    await minion.send_str("early frame")
    await asyncio.sleep(0.2)
    resp = await client.get(f"/golem/v1/connect-to/{WEBSTRATE}/{minion_id}")
    assert resp.status == 400
    with pytest.raises(TimeoutError):
        await minion.receive(timeout=0.5)  # neither golem-connected nor -disconnected
    channel = await client.ws_connect(f"/golem/v1/connect-to/{WEBSTRATE}/{minion_id}")
    assert await receive_event(minion) == {"Event": "golem-connected"}
    msg = await channel.receive(timeout=5)
    assert (msg.type, msg.data) == (WSMsgType.TEXT, "early frame")
    assert "WebSocket upgrade" in (await resp.json())["error"]
    for ws in (channel, minion, golem):
        await ws.close()
