"""Warm minion pools (`MINION_POOL`) against the real engine and real HTTP:
pooled runs get the limits and the sandbox of cold ones, no run sees what
another left, and the pool's containers come and go with the herder."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from herder.app import create_app
from herder.pool import LABEL_POOL
from herder.settings import Settings
from herder.signing import instance_id, load_keypair
from herder.tokens import TokenService

from .conftest import auth, docker_ps, eventually, make_settings

pytestmark = pytest.mark.docker


class Pooled:
    def __init__(self, client: TestClient[Any, Any], settings: Settings) -> None:
        self.client = client
        self.settings = settings
        service = TokenService(load_keypair(settings.data_dir), settings, None)  # type: ignore[arg-type]
        self.token, _ = service.create("pool@example.org", 10000, 1)

    @property
    def instance(self) -> str:
        return instance_id(self.settings.data_dir)

    async def run(self, script: str) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("env", "python")
        form.add_field("main.sh", script)
        resp = await self.client.post("/minion/v1/spawn", data=form, headers=auth(self.token))
        body = await resp.json()
        assert resp.status == 200, body
        assert isinstance(body, dict)
        return body

    async def specs_pool(self) -> dict[str, Any]:
        resp = await self.client.get("/node/v1/specs")
        pool: dict[str, Any] = (await resp.json())["Pool"]
        return pool

    async def metric(self, name: str) -> float:
        resp = await self.client.get("/metrics")
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not in /metrics")

    async def ready(self) -> int:
        ready: int = (await self.specs_pool())["python"]["Ready"]
        return ready

    async def fill(self, size: int) -> None:
        async def full() -> bool:
            return await self.ready() >= size

        await eventually(full, 120, "the pool did not fill")

    def waiting(self) -> list[str]:
        return [
            c["ID"]
            for c in docker_ps(
                f"label={LABEL_POOL}=python", f"label=herder.instance={self.instance}"
            )
        ]


@pytest.fixture
def make_pooled(tmp_path: Path, aiohttp_client: Any) -> Callable[..., Awaitable[Pooled]]:
    made = itertools.count()

    async def make(**overrides: str) -> Pooled:
        settings = make_settings(tmp_path / f"h{next(made)}", **overrides)
        return Pooled(await aiohttp_client(create_app(settings)), settings)

    return make


def _docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], check=True, capture_output=True, text=True)
    return done.stdout.strip()


def _inspect(container_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_docker("inspect", container_id))[0]
    return data


LIMIT_FIELDS = (
    "Memory", "MemorySwap", "NanoCpus", "PidsLimit", "Ulimits", "NetworkMode", "CapDrop",
    "CapAdd", "SecurityOpt", "Privileged", "Init", "ReadonlyRootfs", "Mounts", "Tmpfs",
    "LogConfig", "RestartPolicy", "Binds",
)  # fmt: skip


def _limits(data: dict[str, Any]) -> dict[str, Any]:
    host = data["HostConfig"]
    config = data["Config"]
    return {
        **{name: host.get(name) for name in LIMIT_FIELDS},
        "User": config["User"],
        "Env": config["Env"],
        "Image": config["Image"],
        "WorkingDir": config["WorkingDir"],
        "Entrypoint": config["Entrypoint"],
        "Cmd": config["Cmd"],
    }


async def test_pooled_and_cold_runs_have_the_same_limits(make_pooled: Any) -> None:
    pooled = await make_pooled(minion_pool="python=1")
    cold = await make_pooled(minion_pool="0")
    await pooled.fill(1)
    (waiting,) = pooled.waiting()
    pooled_limits = _limits(_inspect(waiting))

    # A cold run's container, inspected while it runs.
    run = asyncio.create_task(cold.run("sleep 3; echo done\n"))

    async def cold_container() -> bool:
        return bool(docker_ps("label=herder.kind=minion", f"label=herder.instance={cold.instance}"))

    await eventually(cold_container, 30, "the cold run never started")
    (entry,) = docker_ps("label=herder.kind=minion", f"label=herder.instance={cold.instance}")
    cold_limits = _limits(_inspect(entry["ID"]))
    assert (await run)["StdOut"] == "done\n"
    assert pooled_limits == cold_limits
    assert pooled_limits["Memory"] == pooled_limits["MemorySwap"] == 256 << 20
    assert pooled_limits["CapDrop"] == ["ALL"] and pooled_limits["ReadonlyRootfs"] is True
    assert pooled_limits["NetworkMode"] == "none"
    # The pooled one is taken by a run, which is then a hit.
    body = await pooled.run("echo pooled\n")
    assert body["StdOut"] == "pooled\n"
    figures = (await pooled.specs_pool())["python"]
    assert figures["Hits"] == 1 and figures["Size"] == 1
    assert await pooled.metric('herder_pool_hits_total{env="python"}') == 1


SANDBOX = (
    "id -u; "
    "touch /minion/ok && echo minion-writable; "
    "touch /tmp/ok && echo tmp-writable; "
    "touch /etc/nope 2>/dev/null || echo root-read-only; "
    "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
    "python3 -c 'import socket; socket.create_connection((\"1.1.1.1\", 53), 2)' "
    "2>/dev/null || echo no-network\n"
)


async def test_a_pooled_run_is_sandboxed_like_a_cold_one(make_pooled: Any) -> None:
    pooled = await make_pooled(minion_pool="python=1")
    await pooled.fill(1)
    body = await pooled.run(SANDBOX)
    lines = body["StdOut"].split("\n")
    assert lines[0] == "1000"
    assert {"minion-writable", "tmp-writable", "root-read-only", "no-network"} <= set(lines)
    assert "CapEff:\t0000000000000000" in lines and "NoNewPrivs:\t1" in lines
    assert (await pooled.specs_pool())["python"]["Hits"] == 1


async def test_no_run_sees_a_file_or_process_another_left(make_pooled: Any) -> None:
    pooled = await make_pooled(minion_pool="python=2")
    await pooled.fill(2)
    first = await pooled.run(
        "echo secret > /minion/left; echo secret > /tmp/left; "
        "nohup sleep 300 >/dev/null 2>&1 & echo started\n"
    )
    assert first["StdOut"] == "started\n"
    second = await pooled.run(
        "ls -A /minion /tmp; "
        "for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null | tr '\\0' ' '; echo; done\n"
    )
    out = second["StdOut"]
    assert "left" not in out
    assert "sleep 300" not in out
    figures = (await pooled.specs_pool())["python"]
    assert figures["Hits"] == 2 and figures["Misses"] == 0


async def test_the_pool_refills_replaces_a_stopped_one_and_goes_at_shutdown(
    make_pooled: Any,
) -> None:
    pooled = await make_pooled(minion_pool="python=2")
    await pooled.fill(2)
    assert await pooled.metric('herder_pool_ready{env="python"}') == 2
    assert len(pooled.waiting()) == 2
    # Runs take both; the pool makes two new ones.
    await asyncio.gather(pooled.run("echo a\n"), pooled.run("echo b\n"))
    await pooled.fill(2)
    # One stops under it (as in an engine restart): it is replaced.
    victim = pooled.waiting()[0]
    _docker("kill", victim)

    async def replaced() -> bool:
        ids = pooled.waiting()
        return victim not in ids and await pooled.ready() == 2 and len(ids) == 2

    await eventually(replaced, 60, "the stopped pool container was not replaced")
    # With the pool empty (more at once than it holds), runs fall back to cold ones.
    results = await asyncio.gather(*(pooled.run(f"echo {i}\n") for i in range(4)))
    assert [r["StdOut"] for r in results] == [f"{i}\n" for i in range(4)]
    assert (await pooled.specs_pool())["python"]["Misses"] >= 2
    assert await pooled.metric('herder_pool_misses_total{env="python"}') >= 2
    await pooled.client.close()
    assert pooled.waiting() == []


async def test_start_up_removes_stale_pool_containers(tmp_path: Path, aiohttp_client: Any) -> None:
    settings = make_settings(tmp_path / "stale", minion_pool="python=1")
    instance = instance_id(settings.data_dir)
    stale = _docker(
        "create",
        "--label", "herder.managed=1", "--label", "herder.kind=minion",
        "--label", f"herder.instance={instance}", "--label", f"{LABEL_POOL}=python",
        "herder/python:bookworm", "true",
    )  # fmt: skip
    pooled = Pooled(await aiohttp_client(create_app(settings)), settings)
    await pooled.fill(1)
    left = {c["ID"] for c in docker_ps(f"label=herder.instance={instance}")}
    assert stale[:12] not in left and len(left) == 1
    await pooled.client.close()
    assert docker_ps(f"label=herder.instance={instance}") == []
