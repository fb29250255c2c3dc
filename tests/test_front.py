"""The proxy's front door (`herder.proxy.front`): plain proxied GETs and HEADs
answered off the socket, everything else handed to aiohttp on the same
connection; through the server `herder serve` runs, against real daemons
in Docker, over raw connections (so which path answers is known)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from herder.api import keys as appkeys
from herder.app import create_app
from herder.logfmt import TextFormatter
from herder.settings import Settings

from .conftest import ServedTestServer, auth, make_settings
from .daemon_fixtures import Daemons, SpawnedDaemon, wait_http
from .images import ensure_echo_image

pytestmark = pytest.mark.docker

# A daemon answering with every framing the proxy meets: a known large
# length, until close, chunked, no body, cookies.
FILES_SERVER = r"""
import http.server

BIG = bytes(range(256)) * 800  # 204,800 bytes


class Files(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head=False):
        if self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Type", "application/x-big")
            self.send_header("Content-Length", str(len(BIG)))
            self.end_headers()
            if not head:
                self.wfile.write(BIG)
        elif self.path == "/until-close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"read me until the end")
            self.close_connection = True
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"first ", b"second ", b"x" * 70000):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/nothing":
            self.send_response(204)
            self.end_headers()
        elif self.path == "/cookie":
            body = b"cookies"
            self.send_response(200)
            self.send_header("Set-Cookie", "wide=1; Domain=example.org; Path=/")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


http.server.ThreadingHTTPServer(("", 8080), Files).serve_forever()
"""
BIG = bytes(range(256)) * 800


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path / "data",
        daemon_bind_address="127.0.0.1",
        proxy_domain="localhost",
        header_timeout="1",
    )


@pytest.fixture
def client(served_client: TestClient[Any, Any]) -> TestClient[Any, Any]:
    return served_client


@pytest.fixture
async def echo(daemons: Daemons, token: str) -> SpawnedDaemon:
    daemon = await daemons.spawn(token, await ensure_echo_image(), ports=(8080,))
    await wait_http(f"http://{daemon.address}:8080/small")
    return daemon


@pytest.fixture
async def files(client: TestClient[Any, Any], token: str) -> str:
    """The path prefix of a `FILES_SERVER` daemon."""
    form = {
        "name": "files",
        "image": "herder/python:bookworm",
        "ports": "[8080]",
        "main.sh": "exec python3 -u /minion/server.py\n",
        "server.py": FILES_SERVER,
    }
    async with client.post("/daemon/v1/spawn", data=form, headers=auth(token)) as resp:
        assert resp.status == 200, await resp.text()
        reply = await resp.json()
    await wait_http(f"http://{reply['Address']}:8080/nothing")
    return f"/daemon/v1/proxy/{reply['Name']}"


def get(path: str, method: str = "GET", *, close: bool = False, host: str = "herder.test") -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{connection}\r\n".encode()


async def talk(client: TestClient[Any, Any], *pieces: bytes, pause: float = 0.0) -> bytes:
    """Send `pieces` on one new connection (`pause` between them); all the
    server sends back until it closes (the last request says `close`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        async with asyncio.timeout(30):
            return await reader.read()
    finally:
        writer.close()


Answer = tuple[str, list[tuple[str, str]], bytes]


def answers(raw: bytes, methods: list[str]) -> list[Answer]:
    """The responses in `raw`, one per request method, bodies decoded."""
    found: list[Answer] = []
    for method in methods:
        head, _, raw = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        named = {k.lower(): v for k, v in headers}
        status = int(lines[0].split(" ")[1])
        body = b""
        if method == "HEAD" or status in (204, 304):
            pass
        elif named.get("transfer-encoding") == "chunked":
            while True:
                size_line, _, raw = raw.partition(b"\r\n")
                size = int(size_line, 16)
                body, raw = body + raw[:size], raw[size + 2 :]
                if size == 0:
                    break
        elif "content-length" in named:
            size = int(named["content-length"])
            body, raw = raw[:size], raw[size:]
        else:
            body, raw = raw, b""
        found.append((lines[0], headers, body))
    assert raw == b"", raw[:200]
    return found


def comparable(answer: Answer) -> Answer:
    """Without what differs from one request to the next."""
    status, headers, body = answer
    kept = [(k, v) for k, v in headers if k.lower() not in ("date", "x-request-id")]
    return status, sorted(kept), body


def served(client: TestClient[Any, Any]) -> int:
    return client.app[appkeys.FRONT].served


async def test_the_front_door_answers_as_the_route_does(
    client: TestClient[Any, Any], echo: SpawnedDaemon, files: str
) -> None:
    """Each request answered by the front door and, on a connection handed
    to aiohttp by a first request of another route, by the route itself:
    the same status, headers and body (but the date and request id)."""
    prefix = f"/daemon/v1/proxy/{echo.container_name}"
    cases = [
        ("GET", prefix + "/small"),
        ("GET", prefix + "/some/where?x=1&token=secret&y=%2F"),
        ("HEAD", prefix + "/small"),
        ("GET", prefix + "/redirect?to=/elsewhere"),
        ("GET", prefix + "/stream?chunks=3&delay=0&size=30000"),
        ("GET", files + "/big"),
        ("HEAD", files + "/big"),
        ("GET", files + "/until-close"),
        ("GET", files + "/chunked"),
        ("GET", files + "/nothing"),
        ("GET", files + "/cookie"),
        ("GET", files + "/missing"),
    ]
    own = f"{echo.container_name}.localhost:{client.port}"  # its own origin (`PROXY_DOMAIN`)
    cases += [("GET", f"{own} /small"), ("GET", f"{own} /daemon/v1/proxy/x/y?z=1")]
    for method, target in cases:
        host, _, path = target.rpartition(" ")
        request = get(path, method, close=True, host=host or "herder.test")
        before = served(client)
        raw = await talk(client, request)
        (front,) = answers(raw, [method])
        assert served(client) == before + 1, path
        raw = await talk(client, get("/healthz") + request)
        _, route = answers(raw, ["GET", method])
        assert served(client) == before + 1, path  # the route answered this one
        assert comparable(front) == comparable(route), path
        assert dict((k.lower(), v) for k, v in front[1])["x-request-id"]
    # What the daemon got, and what came back of the rules, on the front door's answer.
    (_, _, body) = answers(
        await talk(client, get(prefix + "/q?a=1&token=secret", close=True)), ["GET"]
    )[0]
    echoed = json.loads(body)
    assert echoed["raw_path"] == "/q?a=1" and echoed["peer"]
    seen = {k.lower(): v for k, v in echoed["headers"]}
    assert seen["x-forwarded-prefix"] == prefix and seen["x-real-ip"] == "127.0.0.1"
    status, headers, big = answers(await talk(client, get(files + "/big", close=True)), ["GET"])[0]
    assert status == "HTTP/1.1 200 OK" and big == BIG
    named = {k.lower(): v for k, v in headers}
    assert named["content-security-policy"].startswith("sandbox allow-scripts")
    status, headers, chunked = answers(
        await talk(client, get(files + "/chunked", close=True)), ["GET"]
    )[0]
    assert chunked == b"first second " + b"x" * 70000
    assert ("Transfer-Encoding", "chunked") in headers
    (_, headers, _) = answers(await talk(client, get(files + "/cookie", close=True)), ["GET"])[0]
    assert ("Set-Cookie", f"wide=1; Path={files}/") in headers
    raw = await talk(client, get("/whole/path", close=True, host=own))
    ((status, headers, body),) = answers(raw, ["GET"])
    assert json.loads(body)["path"] == "/whole/path"  # no prefix on its own origin
    assert "content-security-policy" not in {k.lower() for k, _ in headers}  # no sandbox


async def test_websocket_upgrades_and_timeouts_on_front_connections(
    client: TestClient[Any, Any], echo: SpawnedDaemon
) -> None:
    prefix = f"/daemon/v1/proxy/{echo.container_name}"
    async with aiohttp.ClientSession() as session:  # a new connection: the front door's
        async with session.ws_connect(f"http://127.0.0.1:{client.port}{prefix}/ws") as ws:
            await ws.send_str("through the front door")
            assert (await ws.receive(timeout=10)).data == "through the front door"
    # A head that does not come in within HEADER_TIMEOUT (1 s here): 408, closed.
    raw = await talk(client, f"GET {prefix}/small HTTP/1.1\r\nHost: a\r\n".encode())
    assert raw.startswith(b"HTTP/1.1 408 Request Timeout"), raw
    # A kept-alive connection with no new request within the keep-alive timeout: closed.
    client.server.runner.server.keepalive_timeout = 0.5
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(get(f"{prefix}/small"))
        async with asyncio.timeout(10):
            raw = await reader.read()  # until the server closes it
    finally:
        writer.close()
    (answer,) = answers(raw, ["GET"])
    assert answer[0] == "HTTP/1.1 200 OK" and answer[2] == b"ok"


async def test_keep_alive_pipelined_and_split_requests(
    client: TestClient[Any, Any], echo: SpawnedDaemon
) -> None:
    prefix = f"/daemon/v1/proxy/{echo.container_name}"
    before = served(client)
    # Twenty in one write, answered in order on one connection.
    many = [get(f"{prefix}/n{i}") for i in range(19)] + [get(f"{prefix}/n19", close=True)]
    replies = answers(await talk(client, b"".join(many)), ["GET"] * 20)
    assert [json.loads(body)["path"] for _, _, body in replies] == [f"/n{i}" for i in range(20)]
    # One request in pieces of a few bytes, with pauses between them.
    whole = get(f"{prefix}/in/pieces", close=True)
    pieces = [whole[i : i + 7] for i in range(0, len(whole), 7)]
    ((status, _, body),) = answers(await talk(client, *pieces, pause=0.01), ["GET"])
    assert status == "HTTP/1.1 200 OK" and json.loads(body)["path"] == "/in/pieces"
    # Two answered here, then one with a body takes the connection to aiohttp
    # with what follows it.
    post = f"POST {prefix}/upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello".encode()
    mixed = (
        get(f"{prefix}/a") + get(f"{prefix}/small", "HEAD") + post + get(f"{prefix}/b", close=True)
    )
    replies = answers(await talk(client, mixed), ["GET", "HEAD", "POST", "GET"])
    assert [r[0] for r in replies] == ["HTTP/1.1 200 OK"] * 4
    assert json.loads(replies[0][2])["path"] == "/a"
    assert json.loads(replies[2][2]) == {"size": 5, "sha256": hashlib.sha256(b"hello").hexdigest()}
    assert json.loads(replies[3][2])["path"] == "/b"
    assert served(client) == before + 20 + 1 + 2


async def test_a_client_that_reads_late_gets_every_pipelined_answer(
    client: TestClient[Any, Any], echo: SpawnedDaemon
) -> None:
    """Answers pile up while the client does not read (the front door stops
    taking requests then), and all come, in order, once it reads."""
    prefix = f"/daemon/v1/proxy/{echo.container_name}"
    paths = [f"{prefix}/stream?chunks=2&delay=0&size={30000 + i}" for i in range(60)]
    paths += [f"{prefix}/small"] * 40
    requests = [get(path) for path in paths[:-1]] + [get(paths[-1], close=True)]
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(b"".join(requests))
        await writer.drain()
        await asyncio.sleep(1)  # not reading yet
        async with asyncio.timeout(60):
            raw = await reader.read()
    finally:
        writer.close()
    replies = answers(raw, ["GET"] * 100)
    assert [len(body) for _, _, body in replies[:60]] == [2 * (30000 + i) for i in range(60)]
    assert {body for _, _, body in replies[60:]} == {b"ok"}


async def test_malformed_requests_get_aiohttps_400_and_no_traceback(
    client: TestClient[Any, Any], echo: SpawnedDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"/daemon/v1/proxy/{echo.container_name}"
    too_many = "X-A: b\r\n" * 130  # aiohttp takes at most 128 headers
    bad = [
        f"GET {prefix}/x HTTP/1.1\r\nHost: a\r\nNo colon here\r\n\r\n".encode(),
        f"GET {prefix}/x HTTP/1.1\r\nHost: a\r\nX-Bad: \x01\r\n\r\n".encode(),
        f"GET {prefix}/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".encode(),
        f"GET {prefix}/x HTTP/1.1\nHost: a\n\n".encode(),
        f"GET {prefix}/{'x' * 9000} HTTP/1.1\r\nHost: a\r\n\r\n".encode(),
        f"GET {prefix}/x HTTP/1.1\r\nHost: a\r\n{too_many}\r\n".encode(),
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32)) + b"\r\n\r\n",
    ]
    before = served(client)
    for request in bad:
        raw = await talk(client, request)
        assert raw.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), (request[:60], raw[:200])
    assert served(client) == before  # all of them judged by aiohttp
    # A well-formed request first, then a malformed one: answered, then 400.
    raw = await talk(client, get(f"{prefix}/fine") + bad[0])
    assert raw.startswith(b"HTTP/1.1 200 OK") and b" 400 Bad Request\r\n" in raw
    crashed = [r for r in caplog.records if r.name.startswith("herder") and r.exc_info]
    assert crashed == []


async def test_the_log_line_metrics_and_upstream_errors(
    client: TestClient[Any, Any],
    echo: SpawnedDaemon,
    daemons: Daemons,
    token: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    prefix = f"/daemon/v1/proxy/{echo.container_name}"
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    caplog.set_level(logging.INFO, logger="herder")
    before = served(client)
    raw = await talk(client, get(f"{prefix}/{jwt}/a%0D%0Aforged%20line", close=True))
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert served(client) == before + 1
    lines = [TextFormatter().format(r) for r in caplog.records if r.name == "herder"]
    (line,) = [line for line in lines if "forged" in line]
    assert f"GET {prefix}/***/a\\r\\nforged line 200" in line and jwt not in line
    # A daemon that refuses the connection: the route's JSON 502.
    deaf = await daemons.spawn(token, await ensure_echo_image(), ports=(9000, 8080))
    await wait_http(f"http://{deaf.address}:8080/small")
    raw = await talk(client, get(f"/daemon/v1/proxy/{deaf.container_name}/x", close=True))
    ((status, headers, body),) = answers(raw, ["GET"])
    assert status == "HTTP/1.1 502 Bad Gateway"
    assert json.loads(body) == {"error": "the daemon is not answering"}
    assert ("Content-Type", "application/json; charset=utf-8") in headers
    # A daemon that takes too long: 504, on a kept-alive link.
    client.app[appkeys.UPSTREAMS].read_timeout = 0.5
    raw = await talk(client, get(f"{prefix}/small") + get(f"{prefix}/delay?seconds=3", close=True))
    (_, (status, _, body)) = answers(raw, ["GET", "GET"])
    assert status == "HTTP/1.1 504 Gateway Timeout"
    assert json.loads(body) == {"error": "the daemon did not answer in time"}
    after = await counters(client)
    assert after['herder_http_requests_total{method="GET",status="5xx"}'] == 2
    assert after['herder_http_requests_total{method="GET",status="2xx"}'] >= 2
    assert after["herder_proxy_requests_total"] == 4
    assert after['herder_proxy_bytes_total{direction="out"}'] >= len(b"ok")


async def counters(client: TestClient[Any, Any]) -> dict[str, float]:
    async with client.get("/metrics") as resp:
        text = await resp.text()
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in text.splitlines())
        if name and not name.startswith("#")
    }


async def test_shutdown_lets_an_answer_finish_and_closes_idle_connections(
    settings: Settings, aiohttp_client: Callable[..., Any], echo: SpawnedDaemon
) -> None:
    # A second herder on the same data dir (the first one's fixtures need it running).
    client = await aiohttp_client(ServedTestServer(create_app(settings), settings))
    prefix = f"/daemon/v1/proxy/{echo.container_name}"
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", client.port)
    idle_writer.write(get(f"{prefix}/small"))
    ((status, _, _),) = answers(await idle_reader.readuntil(b"ok"), ["GET"])
    assert status == "HTTP/1.1 200 OK"  # and the connection stays open, idle
    busy = asyncio.create_task(
        talk(client, get(f"{prefix}/stream?chunks=4&delay=0.5&size=10", close=True))
    )
    await asyncio.sleep(0.3)  # its answer has begun
    await client.server.runner.cleanup()  # what SIGTERM does
    ((status, _, body),) = answers(await busy, ["GET"])
    assert status == "HTTP/1.1 200 OK" and body == b"0" * 10 + b"1" * 10 + b"2" * 10 + b"3" * 10
    async with asyncio.timeout(5):
        assert await idle_reader.read() == b""  # closed by the shutdown
    idle_writer.close()
