"""Three herders on one Redis and one ledger (a shared SQLite file): each
request is acted on once, whichever herder hears it; a herder killed in
the middle of the Stream leaves nothing unanswered."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from herder.app import create_app
from herder.channels.client import call, new_request_id, script
from herder.settings import Settings
from herder.signing import instance_id

from .channel_fixtures import (
    REDIS_URL,
    Answers,
    daemon_containers,
    dropped,
    remove_daemons,
    share_keys,
    wait_listening,
)
from .conftest import TokenMaker, eventually, make_settings
from .images import ensure_busybox_image

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def settings(tmp_path: Path, prefix: str) -> Settings:
    """The first herder's settings (`make_token` signs with its key pair)."""
    return herder_settings(tmp_path, 0, prefix)


def herder_settings(tmp_path: Path, n: int, prefix: str) -> Settings:
    """Herders in this process keep the default lease (15 s): three of them
    on one loop of a busy machine may be slow to renew a short one."""
    return make_settings(
        tmp_path / f"herder{n}",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}",
        redis_url=REDIS_URL,
        channel_prefix=prefix,
    )


@pytest.fixture
async def three(
    settings: Settings,
    tmp_path: Path,
    prefix: str,
    aiohttp_client: Callable[..., Any],
    redis: Redis,
) -> AsyncIterator[list[TestClient[Any, Any]]]:
    """Three herder apps in this process, one after the other (the first
    makes the ledger's schema)."""
    share_keys(settings.data_dir, tmp_path / "herder1", tmp_path / "herder2")
    clients = [await aiohttp_client(create_app(settings))]
    for n in (1, 2):
        clients.append(await aiohttp_client(create_app(herder_settings(tmp_path, n, prefix))))
    await wait_listening(redis, prefix, 3)
    yield clients


def instances(tmp_path: Path) -> set[str]:
    return {instance_id(tmp_path / f"herder{n}") for n in range(3)}


@pytest.mark.timeout(900)
async def test_100_creates_on_three_herders_start_100_daemons_once_each(
    three: list[TestClient[Any, Any]],
    redis: Redis,
    prefix: str,
    make_token: TokenMaker,
    tmp_path: Path,
) -> None:
    image = await ensure_busybox_image()
    subject = f"hundred-{prefix}@example.org"
    token = make_token(subject, credits=10**7)
    requests = [
        {"id": new_request_id(), "script": script(image), "token": token} for _ in range(100)
    ]
    ids = [r["id"] for r in requests]
    try:
        async with Answers(redis, prefix) as answers:
            await publish_all(redis, f"{prefix}.create", requests)
            await answers.wait("create", ids, timeout=600)
            # The same id twice: one daemon, one answer for both.
            twice = {"id": new_request_id(), "script": script(image), "token": token}
            await redis.publish(f"{prefix}.create", json.dumps(twice))
            await redis.publish(f"{prefix}.create", json.dumps(twice))
            await answers.wait("create", [twice["id"]])
            await asyncio.sleep(1.0)  # a second answer or daemon would show by now
            first = answers.of("create", twice["id"])
            assert len(first) == 1
            # Sent again once answered: the same answer again, no new daemon.
            await redis.publish(f"{prefix}.create", json.dumps(twice))
            await eventually(_count(answers, "create", twice["id"], 2), what="no second answer")
            await asyncio.sleep(1.0)

        replies = {i: answers.of("create", i) for i in ids}
        assert all(len(r) == 1 for r in replies.values()), {
            i: r for i, r in replies.items() if len(r) != 1
        }
        assert [r[0] for r in replies.values() if "error" in r[0]] == []
        names = sorted(r[0]["id"] for r in replies.values())
        assert len(set(names)) == 100
        again = answers.of("create", twice["id"])
        assert len(again) == 2 and again[0] == again[1]
        assert daemon_containers(subject) == sorted([*names, again[0]["id"]])
        clouds = collections.Counter(r[0]["cloud"] for r in replies.values())
        assert set(clouds) <= instances(tmp_path)
        print("creates answered per herder:", dict(clouds))

        # Removes reach each daemon's own herder (the ledger says which).
        removes = [
            {"id": new_request_id(), "session": name, "token": token}
            for name in [*names, again[0]["id"]]
        ]
        by_name = {r[0]["id"]: r[0]["cloud"] for r in [*replies.values(), [again[0]]]}
        async with Answers(redis, prefix) as answers:
            await publish_all(redis, f"{prefix}.remove", removes)
            await answers.wait("remove", [r["id"] for r in removes], timeout=600)
            await asyncio.sleep(0.5)
        for r in removes:
            got = answers.of("remove", r["id"])
            assert got == [{"cloud": by_name[r["session"]], "id": r["session"], "status": False}]
        assert daemon_containers(subject) == []
    finally:
        remove_daemons(subject)


async def publish_all(redis: Redis, channel: str, payloads: list[dict[str, Any]]) -> None:
    """All at once, in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for payload in payloads:
            pipe.publish(channel, json.dumps(payload))
        await pipe.execute()


def _count(answers: Answers, verb: str, request_id: str, n: int) -> Callable[[], Any]:
    async def enough() -> bool:
        return len(answers.of(verb, request_id)) >= n

    return enough


async def test_bad_inputs_on_three_herders(
    three: list[TestClient[Any, Any]],
    redis: Redis,
    prefix: str,
    make_token: TokenMaker,
    tmp_path: Path,
) -> None:
    """One error answer per request among the three; drops counted by each;
    no daemon; every herder still healthy."""
    image = await ensure_busybox_image()
    subject = f"bad-{prefix}@example.org"
    token = make_token(subject)
    forged = (
        "eyJhbGciOiJSUzUxMiIsInR5cCI6IkpXVCJ9."
        "eyJzdWIiOiJtYWxsb3J5QGV4YW1wbGUub3JnIiwiY3JkIjoxMDAwMDAwMDB9.c2lnbmVk"
    )
    answered = {
        "no token": ({"id": new_request_id(), "script": script(image)}, 401),
        "forged token": ({"id": new_request_id(), "script": script(image), "token": forged}, 401),
        "unknown image": ({"id": new_request_id(), "script": script("no/such:1"), "token": token}, 404),
        "script with no JSON": ({"id": new_request_id(), "script": image, "token": token}, 400),
        "10 MB": ({"id": new_request_id(), "script": "x" * (10 << 20), "token": token}, 413),
    }  # fmt: skip
    async with Answers(redis, prefix) as answers:
        await redis.publish(f"{prefix}.create", b"{not json")
        await redis.publish(
            f"{prefix}.create", json.dumps({"script": script(image), "token": token})
        )
        for body, _ in answered.values():
            await redis.publish(f"{prefix}.create", json.dumps(body))
        await answers.wait("create", [body["id"] for body, _ in answered.values()])
        await asyncio.sleep(1.0)
    for what, (body, code) in answered.items():
        got = answers.of("create", body["id"])
        assert [g["code"] for g in got] == [code], what
    for client in three:
        text = await (await client.get("/metrics")).text()
        assert (dropped(text, "not_json"), dropped(text, "no_id")) == (1, 1)
        assert (await client.get("/healthz")).status == 200
    assert daemon_containers(subject) == []


# -- herder processes ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Herders:
    """`herder serve` processes sharing one ledger file and one Redis prefix."""

    def __init__(self, tmp_path: Path, prefix: str) -> None:
        self.tmp_path = tmp_path
        self.prefix = prefix
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.ports = {n: _free_port() for n in range(3)}

    def env(self, n: int) -> dict[str, str]:
        settings = herder_settings(self.tmp_path, n, self.prefix)  # writes the instance id
        return {
            **os.environ,
            "HERDER_DATA_DIR": str(settings.data_dir),
            "HERDER_DATABASE_URL": settings.database_url,
            "HERDER_REDIS_URL": REDIS_URL,
            "HERDER_CHANNEL_PREFIX": self.prefix,
            # A takeover 2 x 10 s after the kill. With 3 s, a loaded machine once
            # re-delivered a takeover to itself three times and left a request
            # unanswered (README, Known limitations: a known bug, not yet fixed).
            "HERDER_CHANNEL_LEASE": "10",
            "HERDER_HOST": "127.0.0.1",
            "HERDER_PORT": str(self.ports[n]),
            "HERDER_DAEMON_BIND_ADDRESS": "127.0.0.1",
        }

    def _spawn(self, n: int) -> None:
        with open(self.tmp_path / f"herder{n}.log", "ab") as log:
            self.processes[n] = subprocess.Popen(
                [sys.executable, "-m", "herder", "serve"], env=self.env(n), stdout=log, stderr=log
            )

    async def start(self, n: int) -> None:
        self._spawn(n)
        url = f"http://127.0.0.1:{self.ports[n]}/healthz"

        async def healthy() -> bool:
            if self.processes[n].poll() is not None:
                pytest.fail(f"herder {n} exited: {(self.tmp_path / f'herder{n}.log').read_text()}")
            try:
                async with aiohttp.ClientSession() as session, session.get(url) as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(healthy, timeout=60, what=f"herder {n} did not become healthy")

    def instance(self, n: int) -> str:
        return instance_id(self.tmp_path / f"herder{n}")

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.timeout(600)
async def test_a_herder_killed_mid_stream_leaves_no_request_unanswered(
    settings: Settings, tmp_path: Path, prefix: str, redis: Redis, make_token: TokenMaker
) -> None:
    image = await ensure_busybox_image()
    share_keys(settings.data_dir, tmp_path / "herder1", tmp_path / "herder2")
    herders = Herders(tmp_path, prefix)
    subject = f"killed-{prefix}@example.org"
    token = make_token(subject, credits=10**7)
    stream = f"{prefix}.requests"
    try:
        for n in range(3):
            await herders.start(n)  # one after the other: the first makes the schema
        await wait_listening(redis, prefix, 3)

        async def three_consumers() -> bool:
            try:
                return len(await redis.xinfo_consumers(stream, "herder")) == 3
            except Exception:
                return False

        await eventually(three_consumers, timeout=30, what="three herders reading the Stream")
        requests = [
            {"id": new_request_id(), "script": script(image), "token": token} for _ in range(40)
        ]
        ids = [r["id"] for r in requests]
        async with Answers(redis, prefix) as answers:
            for r in requests:
                await redis.xadd(stream, {"verb": "create", "payload": json.dumps(r)})
            await eventually(
                _any_answer(answers, ids), timeout=120, what="no answer to the first creates"
            )
            # Kill the herder that holds the most Stream entries it has not acknowledged.
            holding = {
                c["name"].decode(): c["pending"]
                for c in await redis.xinfo_consumers(stream, "herder")
            }
            victim = max(range(3), key=lambda n: holding.get(herders.instance(n), 0))
            assert holding[herders.instance(victim)] > 0, holding
            herders.processes[victim].send_signal(signal.SIGKILL)
            herders.processes[victim].wait(10)
            killed_at = time.monotonic()

            await answers.wait("create", ids, timeout=300)
            await asyncio.sleep(1.0)
        print(f"killed herder {victim} holding {holding}; all answered "
              f"{time.monotonic() - killed_at:.1f} s later")  # fmt: skip
        replies = {i: answers.of("create", i) for i in ids}
        assert all(len(r) == 1 for r in replies.values()), replies
        assert [r[0] for r in replies.values() if "error" in r[0]] == []
        names = sorted(r[0]["id"] for r in replies.values())
        assert len(set(names)) == 40
        # Each answer is kept for a client that was not listening.
        for i in ids:
            kept = json.loads(await redis.get(f"{prefix}.reply.create.{i}"))
            assert kept["reply"] == replies[i][0]
        assert (await redis.xpending(stream, "herder"))["pending"] == 0

        # Back, the killed herder removes a container it made but never
        # recorded (if it died in between): one daemon per request, no more.
        await herders.start(victim)

        async def one_daemon_per_request() -> bool:
            return daemon_containers(subject) == names

        await eventually(
            one_daemon_per_request,
            timeout=60,
            what=f"daemons {daemon_containers(subject)} are not the answers' {names}",
        )
    finally:
        herders.stop_all()
        remove_daemons(subject)


def _any_answer(answers: Answers, ids: list[str]) -> Callable[[], Any]:
    async def some() -> bool:
        return any(answers.of("create", i) for i in ids)

    return some


async def test_status_of_a_session_whose_herder_is_gone_is_503(
    three: list[TestClient[Any, Any]], redis: Redis, prefix: str, token: str, tmp_path: Path
) -> None:
    """A session belongs to the herder that runs it: with that herder's
    announcements gone, the others answer 503 rather than guess."""
    image = await ensure_busybox_image()
    created = await call(
        redis, prefix, "create", {"id": new_request_id(), "script": script(image), "token": token}
    )
    owner = created["cloud"]
    status = await call(
        redis, prefix, "status", {"id": new_request_id(), "session": created["id"], "token": token}
    )
    assert status == {"cloud": owner, "id": created["id"], "status": True}
    # Silence the owner: stop its app's channels, as a dead herder would be.
    (owning,) = [c for c in three if _instance_of(c) == owner]
    await owning.close()
    await redis.delete(f"{prefix}.alive.{owner}")
    status = await call(
        redis, prefix, "status", {"id": new_request_id(), "session": created["id"], "token": token}
    )
    assert status["code"] == 503 and status["cloud"] != owner and status["status"] is False
    remove_container(created["id"])


def remove_container(name: str) -> None:
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=True)


def _instance_of(client: TestClient[Any, Any]) -> str:
    from herder.api import keys as appkeys

    return client.app[appkeys.INSTANCE]
