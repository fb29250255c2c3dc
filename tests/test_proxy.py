"""The daemon reverse proxy, against a real echo daemon in Docker."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from herder.api import keys as appkeys
from herder.app import create_app
from herder.settings import Settings

from .conftest import ServedTestServer, TokenMaker, auth, make_settings
from .daemon_fixtures import Daemons, SpawnedDaemon, wait_http
from .images import ensure_echo_image

pytestmark = pytest.mark.docker


@pytest.fixture
def client(served_client: TestClient[Any, Any]) -> TestClient[Any, Any]:
    """Through the server `herder serve` runs, the proxy's front door included."""
    return served_client


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data", daemon_bind_address="127.0.0.1")


@pytest.fixture
async def echo(daemons: Daemons, token: str) -> SpawnedDaemon:
    image = await ensure_echo_image()
    daemon = await daemons.spawn(token, image, ports=(8080, 9000))
    await wait_http(f"http://{daemon.address}:8080/small")
    return daemon


def prefix(daemon: SpawnedDaemon) -> str:
    return f"/daemon/v1/proxy/{daemon.container_name}"


def header(echoed: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echoed["headers"] if k.lower() == name.lower()]


async def test_methods_reach_the_daemon(client: TestClient[Any, Any], echo: SpawnedDaemon) -> None:
    for method in ("GET", "POST", "PUT", "DELETE"):
        body = f"body of {method}".encode() if method in ("POST", "PUT") else None
        async with client.request(method, prefix(echo) + "/some/path?x=1&y=2", data=body) as resp:
            assert resp.status == 200, await resp.text()
            echoed = await resp.json()
        assert echoed["method"] == method
        assert echoed["path"] == "/some/path"  # the prefix is stripped
        assert echoed["query"] == "x=1&y=2"
        assert echoed["body"] == (body.decode() if body else "")
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "PUT"}
    async with client.options(prefix(echo) + "/some/path", headers=preflight) as resp:
        assert resp.status == 200  # the daemon answers its own preflights
        assert (await resp.json())["method"] == "OPTIONS"
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with client.head(prefix(echo) + "/some/path") as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) > 0
        assert await resp.read() == b""


async def test_headers_and_credentials(
    client: TestClient[Any, Any], echo: SpawnedDaemon, token: str
) -> None:
    headers = {
        **auth(token),
        "Cookie": "session=secret",
        "X-Custom": "kept",
        "X-Forwarded-For": "203.0.113.7",
        "Forwarded": "for=203.0.113.9;host=forged.example;proto=https",
        "X-Real-IP": "203.0.113.9",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "dropped because Connection names it",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic c2VjcmV0",
        "Host": "herder.example:8443",
    }
    url = prefix(echo) + f"/a/b%20c?token={token}&keep=1"
    async with client.get(url, headers=headers) as resp:
        assert resp.status == 200
        echoed = await resp.json()
    assert echoed["raw_path"] == "/a/b%20c?keep=1"  # the token never reaches the daemon
    for name in ("Authorization", "Cookie", "X-Hop", "Keep-Alive", "Proxy-Authorization"):
        assert header(echoed, name) == [], name
    assert header(echoed, "X-Custom") == ["kept"]
    assert header(echoed, "X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]
    assert header(echoed, "X-Forwarded-Proto") == ["http"]
    assert header(echoed, "X-Forwarded-Host") == ["herder.example:8443"]
    assert header(echoed, "X-Forwarded-Prefix") == [prefix(echo)]
    # What the client says of itself is not passed on as what the herder saw.
    assert header(echoed, "Forwarded") == []
    assert header(echoed, "X-Real-IP") == ["127.0.0.1"]
    assert token not in json.dumps(echoed)

    # Taking the token out leaves every other byte of the query as it was sent.
    url = prefix(echo) + f"/q?a=%FF&%74oken={token}&b=1+2&c=%2B;d&token=x"
    async with client.get(url) as resp:
        assert resp.status == 200
        assert (await resp.json())["raw_path"] == "/q?a=%FF&b=1+2&c=%2B;d"


async def test_a_compressed_request_body_arrives_whole(
    client: TestClient[Any, Any], echo: SpawnedDaemon
) -> None:
    """aiohttp's server decompresses a gzip body as it reads it: the daemon
    gets the plain body, without the coding and the compressed length."""
    plain = b"a body the caller compressed, " * 20
    for coding, packed in (
        ("gzip", gzip.compress(plain)),
        ("deflate", zlib.compress(plain)),
    ):
        headers = {"Content-Encoding": coding, "Content-Type": "text/plain"}
        async with client.post(prefix(echo) + "/anything", data=packed, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            echoed = await resp.json()
        assert echoed["body"] == plain.decode(), coding
        assert header(echoed, "Content-Encoding") == []
        assert header(echoed, "Content-Length") in ([], [str(len(plain))])


async def test_plain_name_with_the_owners_token(
    client: TestClient[Any, Any], echo: SpawnedDaemon, token: str, make_token: TokenMaker
) -> None:
    async with client.get(f"/daemon/v1/proxy/{echo.name}/x", headers=auth(token)) as resp:
        assert resp.status == 200
        assert (await resp.json())["path"] == "/x"
    async with client.get(f"/daemon/v1/proxy/{echo.name}/x") as resp:
        assert resp.status == 404
    async with client.get(f"/daemon/v1/proxy/{echo.name}/x", headers=auth(make_token())) as resp:
        assert resp.status == 404


async def test_location_is_rewritten_under_the_prefix(
    client: TestClient[Any, Any], echo: SpawnedDaemon
) -> None:
    cases = {
        "/login?next=/": prefix(echo) + "/login?next=/",
        f"http://{echo.address}:8080/deep/page": prefix(echo) + "/deep/page",
        "http://example.org/elsewhere": "http://example.org/elsewhere",
        "relative/page": "relative/page",
    }
    for to, expected in cases.items():
        url = prefix(echo) + "/redirect"
        async with client.get(url, params={"to": to}, allow_redirects=False) as resp:
            assert resp.status == 302
            assert resp.headers["Location"] == expected
    async with client.get(prefix(echo), allow_redirects=False) as resp:
        assert resp.status == 308
        assert resp.headers["Location"] == prefix(echo) + "/"


async def test_large_upload_streams_with_the_right_checksum(
    client: TestClient[Any, Any], echo: SpawnedDaemon
) -> None:
    size, piece = 50 << 20, bytes(range(256)) * 256  # 64 KiB
    expected = hashlib.sha256()
    for _ in range(size // len(piece)):
        expected.update(piece)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(piece)):
            yield piece

    tracemalloc.start()
    try:
        async with client.post(prefix(echo) + "/upload", data=body()) as resp:
            assert resp.status == 200, await resp.text()
            result = await resp.json()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result == {"size": size, "sha256": expected.hexdigest()}
    # The herder (same process as this client) never held the body whole,
    # although it is far above the app's client_max_size.
    assert size > client.app[appkeys.SETTINGS].max_body_bytes
    assert peak < 16 << 20, f"peak traced memory {peak / 1e6:.1f} MB"


async def test_streamed_response_arrives_in_pieces(
    client: TestClient[Any, Any], echo: SpawnedDaemon
) -> None:
    async with client.get(prefix(echo) + "/stream?chunks=4&delay=0.5&size=10") as resp:
        assert resp.status == 200
        first = await resp.content.readany()
        assert first == b"0" * 10
        assert not resp.content.at_eof()  # the rest is still on its way
        rest = await resp.read()
    assert first + rest == b"0" * 10 + b"1" * 10 + b"2" * 10 + b"3" * 10


async def test_websocket_echo_through_the_proxy(
    client: TestClient[Any, Any], echo: SpawnedDaemon
) -> None:
    async with client.ws_connect(prefix(echo) + "/ws") as ws:
        await ws.send_str("héllo")
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "héllo")
        await ws.send_bytes(b"\x00\x01\xff")
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, b"\x00\x01\xff")
        await ws.send_str("close:4001")
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == 4001  # the daemon's close code comes through
        assert msg.extra == "asked to close"


async def test_unknown_stopped_and_unanswering_daemons(
    client: TestClient[Any, Any],
    daemons: Daemons,
    token: str,
) -> None:
    async with client.get("/daemon/v1/proxy/nobody-here/x") as resp:
        assert resp.status == 404
        assert "error" in await resp.json()
    image = await ensure_echo_image()
    # Its first port is 9000, where nothing listens: refused, 502.
    deaf = await daemons.spawn(token, image, ports=(9000, 8080))
    await wait_http(f"http://{deaf.address}:8080/small")
    async with client.get(prefix(deaf) + "/x") as resp:
        assert resp.status == 502
        assert (await resp.json())["error"] == "the daemon is not answering"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(prefix(deaf) + "/ws")
    assert refused.value.status == 502
    stopped = await daemons.spawn(token, image, ports=(8080,))
    await wait_http(f"http://{stopped.address}:8080/small")
    async with client.get(prefix(stopped) + "/small") as resp:
        assert resp.status == 200  # now the proxy knows its address
    await daemons.kill(stopped)
    async with client.get(prefix(stopped) + "/x") as resp:
        assert resp.status == 404  # forgotten at once: never the old address
    # Removed behind the herder's back: forgotten as soon as Docker says so.
    gone = await daemons.spawn(token, image, ports=(8080,))
    await wait_http(f"http://{gone.address}:8080/small")
    async with client.get(prefix(gone) + "/small") as resp:
        assert resp.status == 200
    await client.app[appkeys.RUNTIME].remove(gone.container_id)
    for _ in range(50):
        if client.app[appkeys.UPSTREAMS].cached(gone.container_name) is None:
            break
        await asyncio.sleep(0.01)
    async with client.get(prefix(gone) + "/x") as resp:
        assert resp.status == 404


async def test_upstream_timeout_is_504(client: TestClient[Any, Any], echo: SpawnedDaemon) -> None:
    async with client.get(prefix(echo) + "/small") as resp:
        assert resp.status == 200  # timeouts in use before they change
    client.app[appkeys.UPSTREAMS].read_timeout = 0.5
    async with client.get(prefix(echo) + "/delay?seconds=3") as resp:
        assert resp.status == 504
        assert (await resp.json())["error"] == "the daemon did not answer in time"


@pytest.fixture
async def owner_only(
    settings: Settings, aiohttp_client: Callable[..., Any], tmp_path: Path
) -> TestClient[Any, Any]:
    """A second herder on the same data dir, with `proxy_require_token` on,
    behind `herder serve`'s server (whose front door then stays out of it)."""
    strict = make_settings(settings.data_dir, proxy_require_token=True)
    client: TestClient[Any, Any] = await aiohttp_client(
        ServedTestServer(create_app(strict), strict)
    )
    return client


async def test_proxy_require_token_makes_it_owner_only(
    owner_only: TestClient[Any, Any], echo: SpawnedDaemon, token: str, make_token: TokenMaker
) -> None:
    url = prefix(echo) + "/x"
    async with owner_only.get(url) as resp:
        assert resp.status == 401
    async with owner_only.get(url, headers=auth(make_token())) as resp:
        assert resp.status == 404
    async with owner_only.get(url, headers=auth(token)) as resp:
        assert resp.status == 200
        assert header(await resp.json(), "Authorization") == []
    async with owner_only.get(url + f"?token={token}") as resp:
        assert resp.status == 200
        assert (await resp.json())["query"] == ""
    assert owner_only.app[appkeys.FRONT].served == 0
