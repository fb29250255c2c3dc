"""Daemon logs, exec and groups, through the real routes: owner only, and a
group's ls, kill and exec touch that group of the caller and nothing else."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from herder.api import keys as appkeys
from herder.ledger import Workload
from herder.runtime import DockerRuntime
from herder.settings import STREAM_CONNECTIONS, Settings

from .conftest import auth, make_settings
from .hostile_bodies import JSON, MALFORMED_JSON, assert_refused, malformed
from .script_image import ensure_script_image

pytestmark = pytest.mark.docker

Spawner = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """The test herder's settings, with a test's own (`indirect` parameters) on top."""
    return make_settings(tmp_path / "data", **getattr(request, "param", {}))


@pytest.fixture
async def spawn(client: Any) -> AsyncIterator[Spawner]:
    """Spawn daemons running a script, as `POST /daemon/v1/spawn` does; remove them after."""
    image = await ensure_script_image()

    async def spawn(token: str, name: str, script: str, group: str | None = None) -> Any:
        form = {"name": name, "image": image, "run.sh": script}
        if group is not None:
            form["group"] = group
        resp = await client.post("/daemon/v1/spawn", data=form, headers=auth(token))
        assert resp.status == 200, await resp.text()
        return await resp.json()

    yield spawn
    app = client.server.app
    runtime = app[appkeys.RUNTIME]
    for container in await runtime.list({"herder.instance": app[appkeys.INSTANCE]}):
        await runtime.remove(container.id)


def _subject() -> str:
    return f"ops-{secrets.token_hex(3)}@example.org"


async def _logs(client: Any, token: str, name: str, query: str = "") -> str:
    resp = await client.get(f"/daemon/v1/logs/{name}{query}", headers=auth(token))
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/plain"
    return str(await resp.text())


async def test_logs_tail_and_owner_only(client: Any, make_token: Any, spawn: Spawner) -> None:
    token, other = make_token(_subject()), make_token(_subject())
    # stderr first and apart: Docker orders the two streams by time
    await spawn(
        token,
        "talker",
        "echo oops >&2; sleep 0.3; for i in 1 2 3 4 5; do echo line$i; done; sleep 600",
    )
    for _ in range(100):
        text = await _logs(client, token, "talker")
        if "line5" in text:
            break
        await asyncio.sleep(0.1)
    assert text.splitlines() == ["oops", "line1", "line2", "line3", "line4", "line5"]
    assert (await _logs(client, token, "talker", "?tail=2")).splitlines() == ["line4", "line5"]
    # `follow=on` is no follow (only 1, true and yes are): the answer ends.
    ended = await asyncio.wait_for(_logs(client, token, "talker", "?tail=1&follow=on"), 20)
    assert ended.splitlines() == ["line5"]

    resp = await client.get("/daemon/v1/logs/talker", headers=auth(other))
    assert resp.status == 404 and "talker" in (await resp.json())["error"]
    assert (await client.get("/daemon/v1/logs/talker")).status == 401
    resp = await client.get("/daemon/v1/logs/talker?tail=lots", headers=auth(token))
    assert resp.status == 400


async def test_logs_follow_streams_new_output(client: Any, make_token: Any, spawn: Spawner) -> None:
    token = make_token(_subject())
    await spawn(token, "ticker", "i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.2; done")
    resp = await client.get("/daemon/v1/logs/ticker?follow=1", headers=auth(token))
    assert resp.status == 200
    seen = b""
    async with asyncio.timeout(20):
        while b"tick4\n" not in seen:
            seen += await resp.content.readany()
    resp.close()
    assert seen.startswith(b"tick1\n")


async def _prompt_ls(client: Any, token: str) -> None:
    """`GET /daemon/v1/ls` answers: a hang (no engine connection free) is the failure."""
    resp = await asyncio.wait_for(client.get("/daemon/v1/ls", headers=auth(token)), 10)
    assert resp.status == 200, await resp.text()
    resp.release()


@pytest.mark.parametrize("settings", [{"streams_per_subject": 2}], indirect=True)
async def test_follows_past_the_subjects_cap_are_429_others_still_follow(
    client: Any, make_token: Any, spawn: Spawner
) -> None:
    token, other = make_token(_subject()), make_token(_subject())
    await spawn(token, "quiet", "sleep 600")
    await spawn(other, "quiet", "sleep 600")
    url = "/daemon/v1/logs/quiet?follow=1"
    held = [await client.get(url, headers=auth(token)) for _ in range(2)]
    assert [r.status for r in held] == [200, 200]
    refused = await client.get(url, headers=auth(token))
    assert refused.status == 429
    assert "at most 2" in (await refused.json())["error"]
    # Only follows count: a plain read of the logs still works.
    assert await _logs(client, token, "quiet") == ""
    theirs = await client.get(url, headers=auth(other))
    assert theirs.status == 200
    await _prompt_ls(client, token)
    # A follow whose client left frees its place, though the daemon is silent.
    held.pop().close()
    async with asyncio.timeout(10):
        while (again := await client.get(url, headers=auth(token))).status == 429:
            again.release()
            await asyncio.sleep(0.2)
    assert again.status == 200
    for resp in (*held, theirs, again):
        resp.close()


@pytest.mark.parametrize("settings", [{"streams_per_subject": 1000}], indirect=True)
async def test_many_follows_never_starve_short_engine_calls(
    client: Any, make_token: Any, spawn: Spawner, settings: Settings
) -> None:
    runtime = client.server.app[appkeys.RUNTIME]
    assert isinstance(runtime, DockerRuntime)
    assert runtime.streams.connector is not runtime.docker.connector
    assert settings.streams_total < runtime.streams.connector.limit == STREAM_CONNECTIONS
    token = make_token(_subject())
    await spawn(token, "silent", "sleep 600")
    url = str(client.make_url("/daemon/v1/logs/silent?follow=1"))

    async def follow(session: aiohttp.ClientSession) -> aiohttp.ClientResponse | None:
        try:
            return await asyncio.wait_for(session.get(url, headers=auth(token)), 10)
        except TimeoutError:
            return None

    # More follows than aiodocker's pool of 100 engine connections.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        follows = await asyncio.gather(*(follow(session) for _ in range(110)))
        try:
            await _prompt_ls(client, token)
            health = await asyncio.wait_for(client.get("/healthz"), 10)
            assert health.status == 200
            statuses = [r.status if r is not None else None for r in follows]
            assert statuses.count(200) == settings.streams_total
            assert statuses.count(429) == len(statuses) - settings.streams_total
            refused = next(r for r in follows if r is not None and r.status == 429)
            assert "herder has too many" in (await refused.json())["error"]
        finally:
            for resp in follows:
                if resp is not None:
                    resp.close()


async def test_exec_one_and_errors(client: Any, make_token: Any, spawn: Spawner) -> None:
    token = make_token(_subject())
    await spawn(token, "box", "sleep 600")
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

    # A command that outlives its timeout is killed, with its children.
    resp = await client.post(
        "/daemon/v1/exec/box",
        json={"cmd": ["sh", "-c", "sleep 30 & sleep 31; echo never"], "timeout": 0.5},
        headers=auth(token),
    )
    result = await resp.json()
    assert result["TimedOut"] is True and result["ExitCode"] is None
    assert result["Killed"] is True and result["StdOut"] == ""

    resp = await client.post(
        "/daemon/v1/exec/box", json={"cmd": ["yes"], "timeout": 5}, headers=auth(token)
    )
    result = await resp.json()
    assert result["Truncated"] is True and len(result["StdOut"]) == 64 << 10
    assert result["Killed"] is True

    # Nothing of either is left running in the daemon.
    resp = await client.post(
        "/daemon/v1/exec/box",
        json={"cmd": ["sh", "-c", "cat /proc/[0-9]*/cmdline"]},
        headers=auth(token),
    )
    running = (await resp.json())["StdOut"].split("\x00")
    assert "30" not in running and "31" not in running and "yes" not in running, running

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


@malformed(MALFORMED_JSON, [("nested cmd", b'{"cmd": ' + b"[" * 100_000, JSON, "JSON")])
@pytest.mark.parametrize("path", ["/daemon/v1/exec/box", "/daemon/v1/exec?group=g"])
async def test_exec_refuses_malformed_json(
    client: Any, make_token: Any, path: str, body: bytes, content_type: str, word: str
) -> None:
    resp = await client.post(
        path, data=body, headers={**auth(make_token(_subject())), "Content-Type": content_type}
    )
    await assert_refused(resp, word)


@pytest.mark.parametrize("tail", ["%C2%B2", "%D9%A3", "9" * 5000, "-1", "+5", "1_0"])
async def test_logs_refuse_a_tail_that_is_not_plain_digits(
    client: Any, make_token: Any, tail: str
) -> None:
    resp = await client.get(f"/daemon/v1/logs/box?tail={tail}", headers=auth(make_token()))
    await assert_refused(resp, "tail")


async def _ls(client: Any, token: str, group: str | None = None) -> list[str]:
    query = f"?group={group}" if group else ""
    resp = await client.get(f"/daemon/v1/ls{query}", headers=auth(token))
    assert resp.status == 200, await resp.text()
    return sorted(d["Labels"]["herder.name"] for d in await resp.json())


async def test_groups_ls_exec_kill_touch_only_that_group_of_the_caller(
    client: Any, make_token: Any, spawn: Spawner
) -> None:
    me, other = make_token(_subject()), make_token(_subject())
    for n in ("a", "b", "c"):
        await spawn(me, f"w{n}", "sleep 600", group="workers")
    await spawn(me, "solo", "sleep 600", group="others")
    await spawn(me, "loner", "sleep 600")
    await spawn(other, "wx", "sleep 600", group="workers")

    assert await _ls(client, me, "workers") == ["wa", "wb", "wc"]
    async with client.server.app[appkeys.LEDGER].read() as conn:
        rows = (await conn.execute(select(Workload.name, Workload.group_name))).all()
    assert {(r.name, r.group_name) for r in rows} >= {("wa", "workers"), ("loner", None)}
    assert await _ls(client, me) == ["loner", "solo", "wa", "wb", "wc"]
    assert await _ls(client, other, "workers") == ["wx"]
    listed = await (await client.get("/daemon/v1/ls?group=workers", headers=auth(me))).json()
    assert {d["Labels"]["herder.group"] for d in listed} == {"workers"}

    resp = await client.post(
        "/daemon/v1/exec?group=workers",
        json={"cmd": ["sh", "-c", "echo I am $HOSTNAME"]},
        headers=auth(me),
    )
    assert resp.status == 200, await resp.text()
    results = await resp.json()
    assert sorted(r["Daemon"] for r in results) == ["wa", "wb", "wc"]
    assert all(r["ExitCode"] == 0 and r["StdOut"].startswith("I am ") for r in results)
    assert len({r["StdOut"] for r in results}) == 3

    resp = await client.post("/daemon/v1/kill?group=workers", headers=auth(me))
    assert resp.status == 200, await resp.text()
    assert len((await resp.json())["Killed"]) == 3
    assert await _ls(client, me) == ["loner", "solo"]
    assert await _ls(client, other) == ["wx"]
    resp = await client.post("/daemon/v1/kill?group=workers", headers=auth(me))
    assert (await resp.json())["Killed"] == []

    for bad in ("/daemon/v1/ls?group=Bad!", "/daemon/v1/kill?group=..x", "/daemon/v1/kill"):
        resp = (
            await client.post(bad, headers=auth(me))
            if "kill" in bad
            else await client.get(bad, headers=auth(me))
        )
        assert resp.status == 400, bad
    resp = await client.post("/daemon/v1/exec?group=Bad!", json={"cmd": ["true"]}, headers=auth(me))
    assert resp.status == 400
    resp = await client.post(
        "/daemon/v1/exec?group=nobody", json={"cmd": ["true"]}, headers=auth(me)
    )
    assert resp.status == 200 and await resp.json() == []
    assert await _ls(client, me) == ["loner", "solo"]


async def test_bad_group_on_spawn_is_400_and_creates_nothing(
    client: Any, make_token: Any, spawn: Spawner
) -> None:
    token = make_token(_subject())
    image = await ensure_script_image()
    resp = await client.post(
        "/daemon/v1/spawn",
        data={"name": "g", "image": image, "group": "No Spaces"},
        headers=auth(token),
    )
    assert resp.status == 400 and "group" in (await resp.json())["error"]
    assert await _ls(client, token) == []
