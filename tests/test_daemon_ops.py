"""Daemon logs and exec, by name and by group, for the owner only."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from herder import appkeys
from herder.runtime.base import ServiceSpec

from .conftest import auth
from .images import ensure_busybox_image

pytestmark = pytest.mark.docker

Starter = Callable[..., Awaitable[str]]


@pytest.fixture
async def start_daemon(client: Any) -> AsyncIterator[Starter]:
    """Start a labelled daemon container of the test herder (as a daemon spawn would)."""
    app = client.server.app
    runtime = app[appkeys.RUNTIME]
    made: list[str] = []

    async def start(subject: str, name: str, script: str, group: str | None = None) -> str:
        labels = {
            "herder.managed": "1",
            "herder.kind": "daemon",
            "herder.instance": app[appkeys.INSTANCE],
            "herder.name": name,
            "herder.subject": subject,
        }
        if group:
            labels["herder.group"] = group
        info = await runtime.run_service(
            ServiceSpec(
                name=f"{name}-{secrets.token_hex(4)}",
                image=await ensure_busybox_image(),
                labels=labels,
                cmd=("sh", "-c", script),
                restart="no",
                nano_cpus=200_000_000,
            )
        )
        made.append(info.id)
        return info.name

    yield start
    await asyncio.gather(*(runtime.remove(ref, volumes=True) for ref in made))


def _subject() -> str:
    return f"ops-{secrets.token_hex(3)}@example.org"


async def test_logs_tail_and_owner_only(
    client: Any, make_token: Any, start_daemon: Starter
) -> None:
    me, other = _subject(), _subject()
    await start_daemon(
        me, "talker", "for i in 1 2 3 4 5; do echo line$i; done; echo oops >&2; sleep 600"
    )
    token = make_token(me)
    for _ in range(50):
        resp = await client.get("/daemon/v1/logs/talker", headers=auth(token))
        assert resp.status == 200
        text = await resp.text()
        if "oops" in text:
            break
        await asyncio.sleep(0.1)
    assert resp.content_type == "text/plain"
    assert text.splitlines() == ["line1", "line2", "line3", "line4", "line5", "oops"]
    resp = await client.get("/daemon/v1/logs/talker?tail=2", headers=auth(token))
    assert (await resp.text()).splitlines() == ["line5", "oops"]

    resp = await client.get("/daemon/v1/logs/talker", headers=auth(make_token(other)))
    assert resp.status == 404 and "talker" in (await resp.json())["error"]
    resp = await client.get("/daemon/v1/logs/talker")
    assert resp.status == 401
    resp = await client.get("/daemon/v1/logs/talker?tail=lots", headers=auth(token))
    assert resp.status == 400


async def test_logs_follow_streams_new_output(
    client: Any, make_token: Any, start_daemon: Starter
) -> None:
    me = _subject()
    await start_daemon(me, "ticker", "i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.2; done")
    resp = await client.get("/daemon/v1/logs/ticker?follow=1", headers=auth(make_token(me)))
    assert resp.status == 200
    seen = b""
    async with asyncio.timeout(20):
        while b"tick4\n" not in seen:
            seen += await resp.content.readany()
    resp.close()
    assert seen.startswith(b"tick1\n")


async def test_exec_one_and_errors(client: Any, make_token: Any, start_daemon: Starter) -> None:
    me = _subject()
    await start_daemon(me, "box", "sleep 600")
    token = make_token(me)
    resp = await client.post(
        "/daemon/v1/exec/box",
        json={"cmd": ["sh", "-c", "echo hello; echo warn >&2; exit 3"]},
        headers=auth(token),
    )
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    assert result["ExitCode"] == 3
    assert result["StdOut"] == "hello\n" and result["StdErr"] == "warn\n"
    assert result["Daemon"] == "box" and result["TimedOut"] is False

    resp = await client.post(
        "/daemon/v1/exec/box",
        json={"cmd": ["sh", "-c", "sleep 30"], "timeout": 0.5},
        headers=auth(token),
    )
    result = await resp.json()
    assert result["TimedOut"] is True and result["ExitCode"] is None

    resp = await client.post(
        "/daemon/v1/exec/box", json={"cmd": ["yes"], "timeout": 5}, headers=auth(token)
    )
    result = await resp.json()
    assert result["Truncated"] is True and len(result["StdOut"]) == 64 << 10

    for bad in ({"cmd": []}, {"cmd": [1, 2]}, {"nocmd": 1}, {"cmd": ["ls"], "timeout": 999}, [1]):
        resp = await client.post("/daemon/v1/exec/box", json=bad, headers=auth(token))
        assert resp.status == 400, bad
        assert (await resp.json())["error"]
    resp = await client.post("/daemon/v1/exec/box", data=b"not json", headers=auth(token))
    assert resp.status == 400
    resp = await client.post(
        "/daemon/v1/exec/box", json={"cmd": ["true"]}, headers=auth(make_token(_subject()))
    )
    assert resp.status == 404


async def test_group_exec_reaches_every_member_of_mine_only(
    client: Any, make_token: Any, start_daemon: Starter
) -> None:
    me, other = _subject(), _subject()
    for n in ("a", "b", "c"):
        await start_daemon(me, f"w{n}", "sleep 600", group="workers")
    await start_daemon(me, "solo", "sleep 600", group="others")
    await start_daemon(other, "wx", "sleep 600", group="workers")
    resp = await client.post(
        "/daemon/v1/exec?group=workers",
        json={"cmd": ["sh", "-c", "echo I am $HOSTNAME"]},
        headers=auth(make_token(me)),
    )
    assert resp.status == 200, await resp.text()
    results = await resp.json()
    assert sorted(r["Daemon"] for r in results) == ["wa", "wb", "wc"]
    assert all(r["ExitCode"] == 0 and r["StdOut"].startswith("I am ") for r in results)
    assert len({r["StdOut"] for r in results}) == 3

    resp = await client.post(
        "/daemon/v1/exec?group=Bad!", json={"cmd": ["true"]}, headers=auth(make_token(me))
    )
    assert resp.status == 400
    resp = await client.post(
        "/daemon/v1/exec?group=nobody", json={"cmd": ["true"]}, headers=auth(make_token(me))
    )
    assert resp.status == 200 and await resp.json() == []
