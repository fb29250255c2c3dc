"""PyCloud's Redis channels on one herder: real redis-server, real Docker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from herder.api import keys as appkeys
from herder.app import create_app
from herder.channels.client import call, new_request_id
from herder.channels.protocol import default_name
from herder.settings import Settings
from herder.signing import instance_id, load_keypair
from herder.tokens import TokenService

from .channel_fixtures import REDIS_URL, Answers, dropped, share_keys, wait_listening
from .conftest import TokenMaker, eventually, make_settings, session_containers
from .images import ensure_busybox_image, ensure_httpd_image
from .test_daemons import get_from, remove_instance_leftovers

pytestmark = pytest.mark.docker


@pytest.fixture
def settings(tmp_path: Path, prefix: str) -> Settings:
    return make_settings(
        tmp_path / "data",
        redis_url=REDIS_URL,
        channel_prefix=prefix,
        daemon_bind_address="127.0.0.1",
    )


@pytest.fixture
async def herder(
    settings: Settings,
    aiohttp_client: Callable[..., Any],
    redis: Redis,
    docker: aiodocker.Docker,
) -> AsyncIterator[TestClient[Any, Any]]:
    client = await aiohttp_client(create_app(settings))
    await wait_listening(redis, settings.channel_prefix)
    yield client
    await remove_instance_leftovers(docker, instance_id(settings.data_dir))


async def test_create_status_remove(
    herder: TestClient[Any, Any], redis: Redis, prefix: str, token: str, settings: Settings
) -> None:
    image = await ensure_httpd_image()
    # PyCloud's create, with herder's token and a file for the daemon to serve.
    config = {"port": 80, "files": {"index.html": "hello from a channel"}}
    request = {"id": new_request_id(), "script": f"{image}\n{json.dumps(config)}", "token": token}
    created = await call(redis, prefix, "create", request)

    cloud = instance_id(settings.data_dir)
    assert created["cloud"] == cloud and "error" not in created
    session = created["id"]
    assert session.startswith(default_name(request["id"]) + "-")
    assert list(created["ports"]) == ["80"] and created["address"]
    assert await get_from(created["ports"]["80"], "/index.html") == (200, "hello from a channel")
    # Over HTTP it is the caller's daemon like any other.
    listed = await (
        await herder.get("/daemon/v1/ls", headers={"Authorization": f"Bearer {token}"})
    ).json()
    assert [d["Names"] for d in listed] == [[f"/{session}"]]

    status = await call(
        redis, prefix, "status", {"id": new_request_id(), "session": session, "token": token}
    )
    assert status == {"cloud": cloud, "id": session, "status": True}

    removed = await call(
        redis, prefix, "remove", {"id": new_request_id(), "session": session, "token": token}
    )
    assert removed == {"cloud": cloud, "id": session, "status": False}
    assert session_containers(f"herder.instance={cloud}") == []
    status = await call(
        redis, prefix, "status", {"id": new_request_id(), "session": session, "token": token}
    )
    assert status == {"cloud": cloud, "id": session, "status": False}
    again = await call(
        redis, prefix, "remove", {"id": new_request_id(), "session": session, "token": token}
    )
    assert again["code"] == 404 and again["status"] is False and "error" in again


async def test_pycloud_prefix_and_the_stream(
    tmp_path: Path,
    aiohttp_client: Callable[..., Any],
    redis: Redis,
    make_token: TokenMaker,
    docker: aiodocker.Docker,
    settings: Settings,
) -> None:
    """With `year4000.pycloud`, PyCloud's own channel names; and the Stream
    `<prefix>.requests` answers on the same reply channels."""
    share_keys(settings.data_dir, tmp_path / "py")  # make_token signs with these
    settings = make_settings(
        tmp_path / "py", redis_url=REDIS_URL, channel_prefix="year4000.pycloud"
    )
    await aiohttp_client(create_app(settings))
    try:
        await wait_listening(redis, "year4000.pycloud")
        image = await ensure_busybox_image()
        token = make_token(credits=100)
        request = {"id": new_request_id(), "script": f"{image}\n{{}}", "token": token}
        created = await call(redis, "year4000.pycloud", "create", request, stream=True)
        assert created["cloud"] == instance_id(settings.data_dir) and created["ports"] == {}
        status = await call(
            redis, "year4000.pycloud", "status",
            {"id": new_request_id(), "session": created["id"], "token": token},
        )  # fmt: skip
        assert status["status"] is True
        # Every Stream entry was acknowledged.
        pending = await redis.xpending("year4000.pycloud.requests", "herder")
        assert pending["pending"] == 0
    finally:
        await remove_instance_leftovers(docker, instance_id(settings.data_dir))
        keys = [k async for k in redis.scan_iter(match="year4000.pycloud.*")]
        await redis.delete(*keys)


async def test_refusals_answer_with_error_and_code_and_start_nothing(
    herder: TestClient[Any, Any],
    redis: Redis,
    prefix: str,
    make_token: TokenMaker,
    tmp_path: Path,
    settings: Settings,
) -> None:
    image = await ensure_busybox_image()
    token = make_token(credits=100)
    broke = make_token(credits=0)
    # A token signed with another herder's key.
    other_keys = load_keypair(tmp_path / "other")
    forged = TokenService(other_keys, settings, None).create("mallory@example.org", 10**6)[0]  # type: ignore[arg-type]

    def create(script_text: Any, tok: str | None = token) -> dict[str, Any]:
        body: dict[str, Any] = {"id": new_request_id(), "script": script_text}
        if tok is not None:
            body["token"] = tok
        return body

    cases: list[tuple[str, dict[str, Any], int]] = [
        ("create", create(f"{image}\n{{}}", None), 401),
        ("create", create(f"{image}\n{{}}", forged), 401),
        ("create", create(f"{image}\n{{}}", "not.a.jwt"), 401),
        ("create", create(f"{image}\n{{}}", broke), 402),
        ("create", create("herder-test/no-such-image:1\n{}"), 404),
        ("create", create(image), 400),  # no JSON after the image
        ("create", create(f"{image}\nnot json"), 400),
        ("create", create(f"{image}\n[80]"), 400),
        ("create", create("Not An Image!\n{}"), 400),
        ("create", create(f'{image}\n{{"name": "etc"}}'), 400),
        ("create", create(f'{image}\n{{"name": "Bad Name"}}'), 400),
        ("create", create(f'{image}\n{{"port": 70000}}'), 400),
        ("create", create(f'{image}\n{{"privileged": true}}'), 400),
        ("create", create(f'{image}\n{{"files": {{"../x": "y"}}}}'), 400),
        ("create", create(12), 400),
        ("status", {"id": new_request_id(), "session": "nosuch-abc", "token": token}, 404),
        ("status", {"id": new_request_id(), "session": "../etc", "token": token}, 400),
        ("remove", {"id": new_request_id(), "session": "nosuch-abc", "token": token}, 404),
        ("remove", {"id": new_request_id(), "session": "nosuch-abc", "token": forged}, 401),
    ]
    async with Answers(redis, prefix) as answers:
        for verb, body, _ in cases:
            await redis.publish(f"{prefix}.{verb}", json.dumps(body))
        for verb, body, _ in cases:
            await answers.wait(verb, [body["id"]])
        await asyncio.sleep(0.3)  # a second answer would show by now
    for verb, body, code in cases:
        replies = answers.of(verb, body["id"])
        assert len(replies) == 1, (verb, body, replies)
        assert replies[0]["code"] == code, (body, replies[0])
        assert replies[0]["error"] and replies[0]["cloud"] == instance_id(settings.data_dir)
    assert session_containers(f"herder.instance={instance_id(settings.data_dir)}") == []


async def test_payloads_without_an_id_are_dropped_and_counted(
    herder: TestClient[Any, Any], redis: Redis, prefix: str, token: str, settings: Settings
) -> None:
    image = await ensure_busybox_image()
    ten_mb = "x" * (10 << 20)
    async with Answers(redis, prefix) as answers:
        await redis.publish(f"{prefix}.create", b"\xff not json")
        await redis.publish(f"{prefix}.create", b"[1, 2]")
        await redis.publish(
            f"{prefix}.create", json.dumps({"script": f"{image}\n{{}}", "token": token})
        )
        await redis.publish(f"{prefix}.status", json.dumps({"id": "", "session": "a-b"}))
        await redis.publish(f"{prefix}.create", json.dumps({"id": {"x": 1}, "token": token}))
        await redis.publish(f"{prefix}.create", json.dumps({"script": ten_mb, "id": "late"}))
        await redis.xadd(f"{prefix}.requests", {"verb": "explode", "payload": "{}"})
        # A 10 MB payload whose id comes first is answered: 413.
        big_id = new_request_id()
        await redis.publish(
            f"{prefix}.create", json.dumps({"id": big_id, "script": ten_mb, "token": token})
        )
        await answers.wait("create", [big_id])
        # Still answering.
        status = await call(
            redis, prefix, "status", {"id": new_request_id(), "session": "a-b", "token": token}
        )
        assert status["code"] == 404

    assert answers.of("create", big_id)[0]["code"] == 413
    assert [c for c in answers.got if not c.endswith((big_id, status_channel(answers)))] == []
    text = await (await herder.get("/metrics")).text()
    assert dropped(text, "not_json") == 2
    assert dropped(text, "no_id") == 3
    assert dropped(text, "too_large") == 1
    assert dropped(text, "bad_entry") == 1
    assert session_containers(f"herder.instance={instance_id(settings.data_dir)}") == []
    health = await herder.get("/healthz")
    assert health.status == 200 and (await health.json())["redis"]["ok"] is True


def status_channel(answers: Answers) -> str:
    return next(c for c in answers.got if ".status." in c)


async def test_rank_announces_this_herder(
    herder: TestClient[Any, Any], redis: Redis, prefix: str, settings: Settings
) -> None:
    pubsub = redis.pubsub()
    await pubsub.subscribe(f"{prefix}.rank")
    try:
        message = None
        for _ in range(80):  # every 5 s
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message:
                break
        assert message is not None, "no rank announcement within 8 s"
    finally:
        await pubsub.aclose()
    rank = json.loads(message["data"])
    assert rank["cloud"] == instance_id(settings.data_dir)
    assert set(rank["running"]) >= {"minion", "daemon", "golem"}
    assert rank["cpus"] >= 0 and rank["memory"] > 0
    assert json.loads(await redis.get(f"{prefix}.alive.{rank['cloud']}"))["cloud"] == rank["cloud"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return process


async def test_redis_lost_is_a_503_and_comes_back(
    tmp_path: Path, aiohttp_client: Callable[..., Any], token: str
) -> None:
    """A Redis of the test's own, stopped and started again under a herder."""
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    process = _start_redis(port, tmp_path)
    redis = Redis.from_url(url, protocol=2)
    try:
        await eventually(_pings(redis), what="our redis-server did not start")
        settings = make_settings(tmp_path / "data", redis_url=url, channel_prefix="lost")
        client = await aiohttp_client(create_app(settings))
        await wait_listening(redis, "lost")
        health = await client.get("/healthz")
        assert health.status == 200 and (await health.json())["redis"]["ok"] is True

        process.send_signal(signal.SIGTERM)
        process.wait(10)
        health = await client.get("/healthz")
        assert health.status == 503
        report = await health.json()
        assert report["redis"]["ok"] is False and report["database"]["ok"] is True
        assert "herder_redis_up 0.0" in await (await client.get("/metrics")).text()

        process = _start_redis(port, tmp_path)
        await eventually(_pings(redis), what="our redis-server did not start again")
        await wait_listening(redis, "lost")  # the herder subscribed again
        answer = await call(
            redis, "lost", "status", {"id": new_request_id(), "session": "a-b", "token": token}
        )
        assert answer["code"] == 404
        assert (await client.get("/healthz")).status == 200
        metrics = await (await client.get("/metrics")).text()
        assert (
            "herder_redis_up 1.0" in metrics and "herder_redis_reconnects_total 0.0" not in metrics
        )
    finally:
        await redis.aclose()
        process.terminate()
        process.wait(10)


def _pings(redis: Redis) -> Callable[[], Any]:
    async def pings() -> bool:
        try:
            return bool(await redis.ping())
        except Exception:
            return False

    return pings


async def test_channels_off_without_redis_url(
    tmp_path: Path, aiohttp_client: Callable[..., Any]
) -> None:
    client = await aiohttp_client(create_app(make_settings(tmp_path / "off")))
    assert client.app[appkeys.SETTINGS].redis_url == ""
    assert appkeys.CHANNELS not in client.app
    health = await client.get("/healthz")
    assert health.status == 200 and "redis" not in await health.json()
    assert "herder_redis_up" not in await (await client.get("/metrics")).text()


def test_a_bad_redis_url_stops_start_up(tmp_path: Path) -> None:
    env = {**os.environ, "HERDER_DATA_DIR": str(tmp_path), "HERDER_REDIS_URL": "http://x:1"}
    run = subprocess.run(
        [sys.executable, "-m", "herder", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert run.stderr.startswith("herder: HERDER_REDIS_URL: malformed Redis URL")


async def test_cli_create_status_remove(
    herder: TestClient[Any, Any], prefix: str, token: str, settings: Settings
) -> None:
    image = await ensure_httpd_image()
    base = [sys.executable, "-m", "herder", "channel"]
    env = {**os.environ, "HERDER_REDIS_URL": REDIS_URL, "HERDER_CHANNEL_PREFIX": prefix,
           "HERDER_TOKEN": token}  # fmt: skip

    async def run(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            *base, *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, out, err = await run("create", image, "-p", "80", "--name", "web", "-f", "index.html=hi")
    assert code == 0, err
    created = json.loads(out)
    assert created["id"].startswith("web-") and created["cloud"] == instance_id(settings.data_dir)
    assert await get_from(created["ports"]["80"], "/index.html") == (200, "hi")
    code, out, _ = await run("status", created["id"], "--stream")
    assert (code, json.loads(out)["status"]) == (0, True)
    code, out, _ = await run("remove", created["id"], "--wipe")
    assert (code, json.loads(out)["status"]) == (0, False)
    code, out, err = await run("remove", created["id"])
    assert (
        code == 1
        and out == ""
        and err.strip() == f"herder: no daemon named {created['id']!r} (code 404)"
    )
    code, _, err = await run("create", "herder-test/none:1", "--timeout", "20")
    assert code == 1 and "(code 404)" in err and len(err.strip().splitlines()) == 1
    code, _, err = await run(
        "status", created["id"], "--prefix", "nobody.listens", "--timeout", "0.5"
    )
    assert code == 1 and err.startswith("herder: no herder answered status")
