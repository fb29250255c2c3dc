"""Nodes on the single-engine runtime (the default): the engine's host is
the one node of `GET /node/v1/nodes` and of spawn's `node`; GPUs are
refused since it offers none. (The Swarm side: test_cluster.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from .conftest import auth
from .daemon_fixtures import Daemons
from .images import ensure_httpd_image

pytestmark = pytest.mark.docker


async def test_the_engine_host_is_the_one_node(
    client: TestClient[Any, Any], token: str, daemons: Daemons
) -> None:
    async with client.get("/node/v1/nodes") as resp:
        assert resp.status == 200
        nodes = await resp.json()
    assert len(nodes) == 1
    node = nodes[0]
    assert node["ID"] and node["Hostname"] and node["CPUs"] > 0 and node["MemoryBytes"] > 0
    assert (node["GPUs"], node["Workloads"], node["State"]) == (0, [], "ready")
    image = await ensure_httpd_image()
    mine = await daemons.spawn(token, image, ports=(80,))
    async with client.get("/node/v1/nodes", headers=auth(token)) as resp:
        listed = await resp.json()
    assert [w["Name"] for w in listed[0]["Workloads"]] == [mine.container_name]
    async with client.get(f"/node/v1/specs?node={node['Hostname']}") as resp:
        assert resp.status == 200
        assert (await resp.json())["ID"] == node["ID"]
    async with client.get("/node/v1/specs?node=elsewhere") as resp:
        assert resp.status == 400
        assert "elsewhere" in (await resp.json())["error"]


async def test_spawn_placement_on_one_engine(
    client: TestClient[Any, Any], token: str, daemons: Daemons
) -> None:
    image = await ensure_httpd_image()
    async with client.get("/node/v1/nodes") as resp:
        host = (await resp.json())[0]
    form = {"name": "placed", "image": image, "ports": "[80]", "node": host["ID"]}
    async with client.post("/daemon/v1/spawn", data=form, headers=auth(token)) as resp:
        assert resp.status == 200, await resp.text()
        reply = await resp.json()
    assert "Node" not in reply  # one engine: no node to name
    await daemons.kill_named(token, reply["Name"])
    for extra, wanted in (
        ({"node": "nowhere"}, "nowhere"),
        ({"gpus": "1"}, "GPU"),
        ({"gpus": "-1"}, "gpus"),
    ):
        form = {"name": "refused", "image": image, **extra}
        async with client.post("/daemon/v1/spawn", data=form, headers=auth(token)) as resp:
            assert resp.status == 400
            assert wanted in (await resp.json())["error"]
    async with client.get("/daemon/v1/ls", headers=auth(token)) as resp:
        assert await resp.json() == []
