"""The proxy's lean HTTP/1.1 client, against a scripted HTTP server on a
real socket: response framings, keep-alive reuse and its failure modes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from herder.proxy.lean import UpstreamBroken, UpstreamPool, UpstreamResponse, UpstreamUnreachable


@dataclass
class Scripted:
    """Answers each request with the next scripted reply (b"": close
    instead); the connection closes after the replies numbered in `close_after`."""

    replies: list[bytes]
    close_after: set[int] = field(default_factory=set)
    heads: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                index = len(self.heads)
                self.heads.append(head)
                if index >= len(self.replies) or not self.replies[index]:
                    return  # closed without an answer
                writer.write(self.replies[index])
                await writer.drain()
                if index in self.close_after:
                    return
        finally:
            writer.close()


Serve = Callable[..., Awaitable[Scripted]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a scripted server: `await serve(replies, close_after)`."""
    servers: list[asyncio.Server] = []

    async def start(replies: list[bytes], close_after: set[int] | None = None) -> Scripted:
        scripted = Scripted(replies, close_after or set())
        server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
        servers.append(server)
        scripted.port = server.sockets[0].getsockname()[1]
        return scripted

    yield start
    for server in servers:
        server.close()


async def request(
    pool: UpstreamPool, scripted: Scripted, path: str = "/", method: str = "GET"
) -> UpstreamResponse:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    return await pool.request(
        "127.0.0.1",
        scripted.port,
        head,
        head_request=method == "HEAD",
        connect_timeout=5,
        read_timeout=2,
    )


async def body(response: UpstreamResponse) -> bytes:
    pieces = [piece async for piece in response.body.chunks(1 << 16)]
    return b"".join(pieces)


def ok(payload: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(payload)}\r\n{extra}\r\n".encode() + payload


async def test_known_length_bodies_reuse_one_connection(serve: Serve) -> None:
    scripted = await serve([ok(b"hello", "X-Thing: one\r\nX-Thing: two\r\n"), ok(b"again")])
    pool = UpstreamPool()
    first = await request(pool, scripted, "/a?b=c")
    assert (first.status, first.reason, first.content_length) == (200, "OK", 5)
    assert first.headers.getall("x-thing") == ["one", "two"]
    assert await first.body.read_all() == b"hello"
    second = await request(pool, scripted)
    assert await second.body.read_all() == b"again"
    assert scripted.connections == 1
    assert scripted.heads[0].startswith(b"GET /a?b=c HTTP/1.1\r\n")
    # More than the body announced: the rest is never taken for an answer.
    scripted = await serve([ok(b"abc") + b"HTTP/1.1 200 OK\r\n\r\n", ok(b"fresh")])
    assert await (await request(pool, scripted)).body.read_all() == b"abc"
    await asyncio.sleep(0.05)
    assert await (await request(pool, scripted)).body.read_all() == b"fresh"
    assert scripted.connections == 2
    await pool.close()


async def test_a_kept_alive_connection_closed_by_the_daemon_is_retried(serve: Serve) -> None:
    # Closed while idle, noticed by the pool before it is used again:
    scripted = await serve([ok(b"one"), ok(b"two")], close_after={0})
    pool = UpstreamPool()
    assert await (await request(pool, scripted)).body.read_all() == b"one"
    await asyncio.sleep(0.05)
    assert await (await request(pool, scripted)).body.read_all() == b"two"
    assert scripted.connections == 2
    # Closed as the request arrives, without a byte of answer (b""):
    scripted = await serve([ok(b"one"), b"", ok(b"three")])
    assert await (await request(pool, scripted)).body.read_all() == b"one"
    assert await (await request(pool, scripted)).body.read_all() == b"three"
    assert scripted.connections == 2 and len(scripted.heads) == 3
    # A partial answer is not retried: the request may have had its effect.
    scripted = await serve([ok(b"one"), b"HTTP/1.1 200 OK\r\n"], close_after={1})
    assert await (await request(pool, scripted)).body.read_all() == b"one"
    with pytest.raises(UpstreamBroken):
        await request(pool, scripted)
    await pool.close()


async def test_chunked_body_with_extensions_and_trailers(serve: Serve) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b"1\r\n \r\n"
        b"5\r\nworld\r\n"
        b"0\r\nTrailer-Field: x\r\n\r\n"
    )
    scripted = await serve([chunked, ok(b"next")])
    pool = UpstreamPool()
    response = await request(pool, scripted)
    assert response.content_length is None
    assert await body(response) == b"hello world"
    assert await (await request(pool, scripted)).body.read_all() == b"next"
    assert scripted.connections == 1  # the connection was reusable after the last chunk
    await pool.close()


async def test_body_until_close_and_large_known_length(serve: Serve) -> None:
    large = bytes(range(256)) * 1024  # 256 KiB, streamed
    scripted = await serve([ok(large), b"HTTP/1.0 200 OK\r\n\r\nuntil the end"], close_after={1})
    pool = UpstreamPool()
    response = await request(pool, scripted)
    assert response.content_length == len(large)
    assert await body(response) == large
    response = await request(pool, scripted)
    assert response.content_length is None
    assert await body(response) == b"until the end"
    await pool.close()


async def test_informational_head_and_no_body_answers(serve: Serve) -> None:
    scripted = await serve(
        [
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + ok(b"final"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",  # to a HEAD
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            ok(b"last"),
        ]
    )
    pool = UpstreamPool()
    response = await request(pool, scripted)
    assert response.status == 200 and await response.body.read_all() == b"final"
    response = await request(pool, scripted, method="HEAD")
    assert response.content_length == 1000 and await body(response) == b""
    response = await request(pool, scripted)
    assert response.status == 204 and await body(response) == b""
    response = await request(pool, scripted)
    assert response.status == 304 and await response.body.read_all() == b""
    assert await (await request(pool, scripted)).body.read_all() == b"last"
    assert scripted.connections == 1
    await pool.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        # A bare LF or CR would split a header once passed on to the client.
        b"HTTP/1.1 200 OK\nX: 1\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: foo\nSet-Cookie: a=b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: foo\rSet-Cookie: a=b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: f\x00o\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 \u00b2\u00b2\u00b2 OK\r\n\r\n".encode(),
        b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\nxx",
    ],
)
async def test_malformed_answers_are_broken(serve: Serve, reply: bytes) -> None:
    scripted = await serve([reply], close_after={0})
    pool = UpstreamPool()
    with pytest.raises(UpstreamBroken):
        await request(pool, scripted)
    await pool.close()


async def test_cut_bodies_are_broken(serve: Serve) -> None:
    scripted = await serve(
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ],
        close_after={0, 1, 2, 3},
    )
    pool = UpstreamPool()
    with pytest.raises(UpstreamBroken):
        await (await request(pool, scripted)).body.read_all()
    for _ in range(3):
        with pytest.raises(UpstreamBroken):
            await body(await request(pool, scripted))
    await pool.close()


async def test_refused_and_silent_daemons() -> None:
    pool = UpstreamPool()
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    refused_port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(UpstreamUnreachable):
        await pool.request(
            "127.0.0.1", refused_port, b"GET / HTTP/1.1\r\n\r\n",
            head_request=False, connect_timeout=5, read_timeout=1,
        )  # fmt: skip
    hanging = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hanging.wait()
        writer.close()

    quiet = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    try:
        with pytest.raises(TimeoutError):
            await pool.request(
                "127.0.0.1", quiet.sockets[0].getsockname()[1], b"GET / HTTP/1.1\r\n\r\n",
                head_request=False, connect_timeout=5, read_timeout=0.2,
            )  # fmt: skip
    finally:
        hanging.set()
        quiet.close()
    await pool.close()
