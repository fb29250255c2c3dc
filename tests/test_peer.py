"""The herder-to-herder channel off the lab: the signature of peer requests
(pure), the cluster secret's settings, and the `/peer/v1/...` routes of a
real herder on the local engine, which refuse every request not signed under
the cluster secret and do nothing for it."""

from __future__ import annotations

import json
import secrets
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from herder.api import keys as appkeys
from herder.errors import SettingsError, Unauthorized
from herder.peers import (
    HEADER_SIGNATURE,
    HEADER_SUBJECT,
    HEADER_TIME,
    HEADER_TO,
    MAX_SKEW,
    PeerAuth,
)
from herder.settings import Settings

from .conftest import TokenMaker, auth, eventually, make_settings
from .daemon_fixtures import Daemons
from .images import ensure_cat_image

SECRET = secrets.token_urlsafe(32)


def test_a_signed_request_verifies_once_and_nothing_else_does() -> None:
    sender, receiver = PeerAuth(SECRET, "a"), PeerAuth(SECRET, "b")
    query = {"tail": "5", "binary": "0"}
    headers = sender.sign(
        "GET", "/peer/v1/attach/x", query, to="b", subject="me@example.org", body=b"hi"
    )
    assert receiver.verify("GET", "/peer/v1/attach/x", query, headers, b"hi") == "me@example.org"
    with pytest.raises(Unauthorized):  # the same request again: a replay
        receiver.verify("GET", "/peer/v1/attach/x", query, headers, b"hi")
    with pytest.raises(Unauthorized):  # signed for replica b, replayed to replica c
        PeerAuth(SECRET, "c").verify("GET", "/peer/v1/attach/x", query, headers, b"hi")
    fresh = PeerAuth(SECRET, "b")
    changed: list[tuple[str, str, dict[str, str], dict[str, str], bytes]] = [
        ("POST", "/peer/v1/attach/x", query, headers, b"hi"),  # another method
        ("GET", "/peer/v1/attach/y", query, headers, b"hi"),  # another path
        ("GET", "/peer/v1/attach/x", {**query, "tail": "6"}, headers, b"hi"),  # another query
        ("GET", "/peer/v1/attach/x", query, headers, b"ho"),  # another body
        ("GET", "/peer/v1/attach/x", query, {**headers, HEADER_SUBJECT: "you"}, b"hi"),
        ("GET", "/peer/v1/attach/x", query, {**headers, HEADER_TO: "c"}, b"hi"),
        ("GET", "/peer/v1/attach/x", query, {**headers, HEADER_SIGNATURE: "0" * 64}, b"hi"),
        ("GET", "/peer/v1/attach/x", query, {}, b"hi"),  # not signed at all
    ]
    for method, path, q, h, body in changed:
        with pytest.raises(Unauthorized):
            fresh.verify(method, path, q, h, body)
    # Signed under another secret.
    other = PeerAuth(secrets.token_urlsafe(32), "a").sign("GET", "/p", to="b", subject="me")
    with pytest.raises(Unauthorized):
        fresh.verify("GET", "/p", {}, other)
    # Too old (or from a clock too far off).
    old = sender.sign("GET", "/p", to="b", subject="me")
    sent = float(old[HEADER_TIME])
    with pytest.raises(Unauthorized):
        fresh.verify("GET", "/p", {}, old, now=sent + MAX_SKEW + 1)
    assert fresh.verify("GET", "/p", {}, old, now=sent + MAX_SKEW - 1) == "me"


def test_the_cluster_secret_settings(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="at least 32"):
        Settings.load({"data_dir": str(tmp_path), "cluster_secret": "short"}, environ={})
    path = tmp_path / "cluster-secret"
    path.write_text(SECRET + "\n")  # as `docker secret create` files often end
    loaded = Settings.load({"data_dir": str(tmp_path)}, {"HERDER_CLUSTER_SECRET_FILE": str(path)})
    assert loaded.cluster_secret == SECRET
    assert SECRET not in repr(loaded)
    with pytest.raises(SettingsError, match="not both"):
        Settings.load(
            {"data_dir": str(tmp_path), "cluster_secret": SECRET, "cluster_secret_file": str(path)},
            environ={},
        )
    with pytest.raises(SettingsError, match="cannot read") as refused:
        Settings.load({"data_dir": str(tmp_path), "cluster_secret_file": str(tmp_path / "no")}, {})
    assert "\n" not in str(refused.value)
    with pytest.raises(SettingsError, match="PEER_URL"):
        Settings.load({"data_dir": str(tmp_path), "peer_url": "nowhere"}, environ={})
    default = Settings.load({"data_dir": str(tmp_path)}, environ={})
    assert (default.cluster_secret, default.peer_url) == ("", "")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data", cluster_secret=SECRET, daemon_bind_address="127.0.0.1")


async def _status(resp: aiohttp.ClientResponse) -> tuple[int, Any]:
    return resp.status, await resp.json()


@pytest.mark.docker
async def test_peer_routes_refuse_unsigned_requests_and_do_nothing(
    client: TestClient[Any, Any], daemons: Daemons, make_token: TokenMaker
) -> None:
    email = f"peer-{secrets.token_hex(3)}@example.org"
    token = make_token(email)
    cat = await daemons.spawn(token, await ensure_cat_image())
    me = client.server.app[appkeys.REPLICA]  # what a peer signs its request for
    payload = {"name": cat.container_name, "cmd": ["sh", "-c", "echo > /tmp/pwned"]}
    body = json.dumps(payload).encode()
    stranger = PeerAuth(secrets.token_urlsafe(32), "stranger")
    peer = PeerAuth(SECRET, "peer")
    tries: list[dict[str, str]] = [
        {},  # nothing
        auth(token),  # the owner's own token is no peer's proof
        stranger.sign("POST", "/peer/v1/exec", to=me, subject=email, body=body),  # another secret
        peer.sign("POST", "/peer/v1/exec", to=me, subject=email, body=b"{}"),  # for another body
        peer.sign("POST", "/peer/v1/exec", to="another-replica", subject=email, body=body),
        {
            **peer.sign("POST", "/peer/v1/exec", to=me, subject=email, body=body),
            HEADER_SUBJECT: "x",
        },
    ]
    for headers in tries:
        resp = await client.post("/peer/v1/exec", data=body, headers=headers)
        status, answer = await _status(resp)
        assert status == 401 and "cluster secret" in answer["error"], (headers.keys(), answer)
        assert SECRET not in str(answer)

    async def exists() -> int:
        resp = await client.post(
            f"/daemon/v1/exec/{cat.container_name}",
            json={"cmd": ["sh", "-c", "test -e /tmp/pwned"]},
            headers=auth(token),
        )
        status, result = await _status(resp)
        assert status == 200, result
        return int(result["ExitCode"])

    assert await exists() == 1  # none of them ran anything
    good = peer.sign("POST", "/peer/v1/exec", to=me, subject=email, body=body)
    resp = await client.post("/peer/v1/exec", data=body, headers=good)
    status, result = await _status(resp)
    assert (status, result["ExitCode"]) == (200, 0), result
    assert await exists() == 0
    resp = await client.post("/peer/v1/exec", data=body, headers=good)  # replayed
    assert resp.status == 401
    # A signed request for another subject finds nothing of this one's.
    other = peer.sign("POST", "/peer/v1/exec", to=me, subject="other@example.org", body=body)
    resp = await client.post("/peer/v1/exec", data=body, headers=other)
    assert resp.status == 404

    path = f"/peer/v1/attach/{cat.container_name}"
    for headers in ({}, auth(token), stranger.sign("GET", path, to=me, subject=email)):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(path, headers=headers)
        assert refused.value.status == 401
    async with client.ws_connect(path, headers=peer.sign("GET", path, to=me, subject=email)) as ws:
        await ws.send_str("through a peer\n")
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "through a peer\n")

    # This replica is in the peer registry, on its engine's node.
    app = client.server.app
    node = (await app[appkeys.RUNTIME].nodes())[0]
    found = await app[appkeys.LEDGER].peer_on_node(node.id)
    assert found is not None and found[0] == app[appkeys.REPLICA]


@pytest.mark.docker
async def test_without_a_cluster_secret_the_peer_routes_are_off(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    from herder.app import create_app

    client = await aiohttp_client(create_app(make_settings(tmp_path / "plain")))
    me = client.server.app[appkeys.REPLICA]
    signed = PeerAuth(SECRET, "peer").sign("POST", "/peer/v1/exec", to=me, subject="x", body=b"{}")
    status, answer = await _status(await client.post("/peer/v1/exec", data=b"{}", headers=signed))
    assert status == 403 and "CLUSTER_SECRET" in answer["error"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _receive(ws: aiohttp.ClientWebSocketResponse) -> Any:
    msg = await ws.receive(timeout=10)
    assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
    return msg.data


async def _event(ws: aiohttp.ClientWebSocketResponse) -> Any:
    return json.loads(await _receive(ws))


@pytest.mark.docker
async def test_the_relay_works_across_two_replicas(tmp_path: Path) -> None:
    """Two herders, one ledger: the golem's control socket on one, its minions
    (waiting before it came, and after) and its data channels on the other."""
    from herder.app import create_app

    database = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    instance = make_settings(tmp_path / "r0").data_dir / "instance-id"
    servers: list[TestServer] = []
    try:
        for i in range(2):
            port = _free_port()
            data = tmp_path / f"r{i}"
            data.mkdir(exist_ok=True)
            (data / "instance-id").write_text(instance.read_text())  # one herder
            settings = make_settings(
                data,
                database_url=database,
                cluster_secret=SECRET,
                golem_open_control=True,
                golem_wait=10,
                port=port,
                peer_url=f"http://127.0.0.1:{port}",
            )
            server = TestServer(create_app(settings), host="127.0.0.1", port=port)
            await server.start_server()  # one after the other: one migrates
            servers.append(server)
        ledger = servers[0].app[appkeys.LEDGER]
        other = servers[1].app[appkeys.REPLICA]

        async def registered() -> bool:
            return await ledger.peer_url(other) is not None

        await eventually(registered, 10, "both replicas are in the peer registry")
        one, two = (f"ws://127.0.0.1:{s.port}" for s in servers)
        webstrate = f"across-{secrets.token_hex(3)}"
        async with aiohttp.ClientSession() as session:
            early = await session.ws_connect(f"{two}/minion/v1/connect/{webstrate}?type=early")
            await early.send_str("sent while waiting")
            control = await session.ws_connect(f"{one}/golem/v1/connect/{webstrate}")
            first = await _event(control)
            assert (first["Event"], first["Type"]) == ("minion-connected", "early")
            late = await session.ws_connect(f"{two}/minion/v1/connect/{webstrate}?type=late")
            second = await _event(control)
            assert (second["Event"], second["Type"]) == ("minion-connected", "late")
            # The other replica knows the golem is connected (`golem ls`'s Connected).
            assert await servers[1].app[appkeys.RELAY_PEERS].elsewhere() == {webstrate}
            assert await servers[0].app[appkeys.RELAY_PEERS].elsewhere() == set()
            # A second control socket for the webstrate, on the other replica: 409.
            with pytest.raises(aiohttp.WSServerHandshakeError) as taken:
                await session.ws_connect(f"{two}/golem/v1/connect/{webstrate}")
            assert taken.value.status == 409
            # An unknown minion is a 404 whether it is asked here or carried there.
            for minion_id in ("0" * 32, "no-such-minion"):
                with pytest.raises(aiohttp.WSServerHandshakeError) as unknown:
                    await session.ws_connect(f"{two}/golem/v1/connect-to/{webstrate}/{minion_id}")
                assert unknown.value.status == 404
            # Data channels opened on the minions' replica reach the golem's.
            channel = await session.ws_connect(
                f"{two}/golem/v1/connect-to/{webstrate}/{first['ID']}"
            )
            assert await _event(early) == {"Event": "golem-connected"}
            assert await _receive(channel) == "sent while waiting"
            await early.send_bytes(b"\x00binary up")
            assert await _receive(channel) == b"\x00binary up"
            await channel.send_str("text down")
            assert await _receive(early) == "text down"
            await channel.send_bytes(b"\xffbinary down")
            assert await _receive(early) == b"\xffbinary down"
            channel2 = await session.ws_connect(
                f"{one}/golem/v1/connect-to/{webstrate}/{second['ID']}"
            )
            assert await _event(late) == {"Event": "golem-connected"}
            await late.send_str("late hello")
            assert await _receive(channel2) == "late hello"
            # The minion leaves: its golem hears of it across the replicas.
            await early.close()
            gone = await _event(control)
            assert gone == {"Event": "minion-disconnected", "ID": first["ID"]}
            assert await _event(channel) == gone
            # The golem leaves: its minions on the other replica are told and closed.
            await control.close()
            assert await _event(late) == {"Event": "golem-disconnected"}
            msg = await late.receive(timeout=10)
            assert (msg.type, late.close_code) == (aiohttp.WSMsgType.CLOSE, 1001)
            await channel2.close()
            await channel.close()
    finally:
        for server in reversed(servers):
            await server.close()


async def _serve(app: Any) -> tuple[Any, str]:
    """An app served as `herder serve` serves (no handler cancellation)."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def test_a_bridged_websocket_keeps_frames_and_close_codes() -> None:
    """`bridge` between a real client socket and a real upstream socket:
    text stays text, binary stays binary, and each side's close code and
    reason reach the other."""
    from aiohttp import web

    from herder.peers import bridge

    closed_by_client: list[int | None] = []  # the upstream's close codes of clients

    async def upstream_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT and msg.data == "close please":
                await ws.close(code=4001, message=b"the upstream's reason")
                return ws
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data.upper())
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        closed_by_client.append(ws.close_code)
        return ws

    upstream_app = web.Application()
    upstream_app.router.add_get("/up", upstream_handler)

    async def front_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        async with aiohttp.ClientSession() as session:
            far = await session.ws_connect(f"{upstream_url}/up")
            await ws.prepare(request)
            await bridge(ws, far, lost=(1011, "lost"), first=["early"])
        return ws

    front_app = web.Application()
    front_app.router.add_get("/front", front_handler)
    upstream_runner, upstream_url = await _serve(upstream_app)
    front_runner, front_url = await _serve(front_app)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{front_url}/front") as ws:
                assert (await ws.receive(timeout=5)).data == "EARLY"  # `first` went up first
                await ws.send_str("text")
                msg = await ws.receive(timeout=5)
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "TEXT")
                await ws.send_bytes(b"\x00\x01\xff")
                msg = await ws.receive(timeout=5)
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, b"\xff\x01\x00")
                await ws.send_str("close please")
                msg = await ws.receive(timeout=5)
                assert (msg.type, msg.data, msg.extra) == (
                    aiohttp.WSMsgType.CLOSE,
                    4001,
                    "the upstream's reason",
                )
            # The client closes first: the upstream gets its code.
            async with session.ws_connect(f"{front_url}/front") as ws:
                assert (await ws.receive(timeout=5)).data == "EARLY"
                await ws.close(code=4002, message=b"bye")
        await eventually(lambda: _any(closed_by_client), 5, "the upstream saw the client's close")
        assert closed_by_client == [4002]
    finally:
        await front_runner.cleanup()
        await upstream_runner.cleanup()


async def _any(items: list[Any]) -> bool:
    return bool(items)
