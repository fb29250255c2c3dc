"""Daemons through the real HTTP API on a real Docker Engine."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import pytest

from herder.api import keys as appkeys
from herder.settings import Settings
from herder.signing import instance_id

from .conftest import TokenMaker, auth, eventually, make_settings
from .hostile_bodies import MALFORMED_FORMS, assert_refused, malformed
from .images import (
    ensure_busybox_image,
    ensure_command_image,
    ensure_httpd_image,
    ensure_volume_image,
)

pytestmark = pytest.mark.docker


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path / "data", daemon_bind_address="127.0.0.1", metering_interval="0.25"
    )


@pytest.fixture(autouse=True)
async def remove_what_the_test_made(
    settings: Settings, docker: aiodocker.Docker
) -> AsyncIterator[None]:
    yield
    await remove_instance_leftovers(docker, instance_id(settings.data_dir))


async def remove_instance_leftovers(docker: aiodocker.Docker, instance: str) -> None:
    label = json.dumps({"label": [f"herder.instance={instance}"]})
    for container in await docker.containers.list(all=True, filters=label):
        await container.delete(force=True, v=True)
    volumes = (await docker.volumes.list(filters=json.loads(label))).get("Volumes") or []
    for volume in volumes:
        await aiodocker.volumes.DockerVolume(docker, volume["Name"]).delete()


async def instance_volumes(docker: aiodocker.Docker, instance: str) -> list[str]:
    listed = await docker.volumes.list(filters={"label": [f"herder.instance={instance}"]})
    return [v["Name"] for v in listed.get("Volumes") or []]


async def spawn(client: Any, token: str, **form: str) -> Any:
    return await client.post("/daemon/v1/spawn", data=form, headers=auth(token))


async def get_from(port: int, path: str = "/") -> tuple[int, str]:
    """GET from a published host port, waiting for the daemon to listen."""
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                    return resp.status, await resp.text()
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    pytest.fail(f"nothing answers on port {port}")


async def remaining(client: Any, token: str) -> int:
    resp = await client.get("/token/v1/balance", headers=auth(token))
    credits: int = (await resp.json())["credits"]
    return credits


async def test_full_lifecycle(
    client: Any, token: str, settings: Settings, docker: aiodocker.Docker
) -> None:
    image = await ensure_httpd_image()
    resp = await spawn(
        client,
        token,
        name="web",
        image=image,
        ports='[80, "8080"]',
        **{"index.html": "<h1>hi</h1>"},
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["Name"].startswith("web-") and body["Address"]
    assert list(body["Ports"]) == ["80", "8080"] and all(body["Ports"].values())
    assert await get_from(body["Ports"]["80"]) == (200, "<h1>hi</h1>")

    resp = await client.get("/daemon/v1/ls", headers=auth(token))
    listed = await resp.json()
    assert [d["Names"] for d in listed] == [["/" + body["Name"]]]
    assert listed[0]["State"] == "running" and listed[0]["Image"] == image
    labels = listed[0]["Labels"]
    assert labels["herder.kind"] == "daemon" and labels["herder.name"] == "web"
    assert token not in json.dumps(listed)

    # What the reverse proxy and attach rely on: the registry row.
    instance = instance_id(settings.data_dir)
    row = await client.app[appkeys.LEDGER].running_workload(instance, "daemon", body["Name"])
    assert row is not None and row.container_id == listed[0]["Id"]
    assert row.address == body["Address"] and json.loads(row.ports) == body["Ports"]

    # Limits from settings, nothing privileged, the data volume at /web and /minion.
    config = (await docker.containers.get(body["Name"]))._container
    host = config["HostConfig"]
    assert host["Memory"] == settings.daemon_memory_mb << 20
    assert host["PidsLimit"] == settings.daemon_pids
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == list(settings.daemon_capabilities)
    assert "NET_RAW" not in host["CapAdd"]
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert not host["Privileged"] and not host["Binds"] and host["NetworkMode"] != "host"
    assert {m["Destination"] for m in config["Mounts"]} == {"/web", "/minion"}
    assert {m["Type"] for m in config["Mounts"]} == {"volume"}

    resp = await client.delete(f"/daemon/v1/kill/{body['Name']}", headers=auth(token))
    assert resp.status == 200, await resp.text()
    resp = await client.get("/daemon/v1/ls", headers=auth(token))
    assert await resp.json() == []
    assert (
        await client.app[appkeys.LEDGER].running_workload(instance, "daemon", body["Name"]) is None
    )
    with pytest.raises(aiodocker.DockerError):
        await docker.containers.get(body["Name"])


async def test_other_subjects_see_nothing(client: Any, make_token: TokenMaker) -> None:
    image = await ensure_busybox_image()
    alice, bob = make_token("alice@example.org"), make_token("bob@example.org")
    resp = await spawn(client, alice, name="a.b", image=image)
    assert resp.status == 200, await resp.text()
    name = (await resp.json())["Name"]

    assert await (await client.get("/daemon/v1/ls", headers=auth(bob))).json() == []
    for target in ("a.b", name, "axb"):
        resp = await client.get(f"/daemon/v1/kill/{target}", headers=auth(bob))
        assert resp.status == 404 and (await resp.json())["error"]
    # `a.b` is not a pattern: alice's own `axb` does not exist either.
    assert (await client.post("/daemon/v1/kill/axb", headers=auth(alice))).status == 404
    listed = await (await client.get("/daemon/v1/ls", headers=auth(alice))).json()
    assert [d["State"] for d in listed] == ["running"]
    assert (await client.get("/daemon/v1/ls")).status == 401


async def test_data_kept_across_respawn_and_wiped_on_request(
    client: Any, token: str, make_token: TokenMaker, settings: Settings, docker: aiodocker.Docker
) -> None:
    image = await ensure_httpd_image()
    resp = await spawn(client, token, name="keep", image=image, ports="[80]", **{"notes.txt": "v1"})
    first = await resp.json()
    assert await get_from(first["Ports"]["80"], "/notes.txt") == (200, "v1")

    # Spawning a name that exists restarts it and keeps the data.
    resp = await spawn(client, token, name="keep", image=image, ports="[80]", **{"new.txt": "v2"})
    second = await resp.json()
    assert (
        resp.status == 200
        and len(await (await client.get("/daemon/v1/ls", headers=auth(token))).json()) == 1
    )
    assert await get_from(second["Ports"]["80"], "/notes.txt") == (200, "v1")

    # Kill keeps the volume; a respawn finds the data again.
    assert (await client.get("/daemon/v1/kill/keep", headers=auth(token))).status == 200
    instance = instance_id(settings.data_dir)
    assert len(await instance_volumes(docker, instance)) == 1
    resp = await spawn(client, token, name="keep", image=image, ports="[80]")
    third = await resp.json()
    assert await get_from(third["Ports"]["80"], "/new.txt") == (200, "v2")

    # wipe=true deletes it.
    resp = await client.get("/daemon/v1/kill/keep?wipe=true", headers=auth(token))
    assert resp.status == 200
    assert await instance_volumes(docker, instance) == []
    resp = await spawn(client, token, name="keep", image=image, ports="[80]")
    fourth = await resp.json()
    assert (await get_from(fourth["Ports"]["80"], "/notes.txt"))[0] == 404

    # The data of a daemon killed without wipe can be wiped later, by its owner only.
    assert (await client.get("/daemon/v1/kill/keep", headers=auth(token))).status == 200
    assert len(await instance_volumes(docker, instance)) == 1
    other = make_token()
    resp = await client.get("/daemon/v1/kill/keep?wipe=true", headers=auth(other))
    assert resp.status == 404
    assert len(await instance_volumes(docker, instance)) == 1
    resp = await client.get("/daemon/v1/kill/keep?wipe=true", headers=auth(token))
    assert resp.status == 200
    assert await resp.json() == {"Killed": [], "Wiped": True}
    assert await instance_volumes(docker, instance) == []
    resp = await client.get("/daemon/v1/kill/keep?wipe=true", headers=auth(token))
    assert resp.status == 404

    # `wipe=on` wipes as `wipe=true` does.
    resp = await spawn(client, token, name="keep", image=image, ports="[80]")
    assert resp.status == 200
    assert len(await instance_volumes(docker, instance)) == 1
    resp = await client.get("/daemon/v1/kill/keep?wipe=on", headers=auth(token))
    assert (await resp.json())["Wiped"] is True
    assert await instance_volumes(docker, instance) == []


async def test_anonymous_volumes_of_an_image_go_with_its_containers(
    client: Any, token: str, docker: aiodocker.Docker
) -> None:
    """An image's `VOLUME`s give each container an anonymous volume: removed
    with the container on respawn and kill, while the named data volume stays."""
    image = await ensure_volume_image()
    anonymous: set[str] = set()
    for _ in range(2):
        resp = await spawn(client, token, name="vol", image=image)
        assert resp.status == 200, await resp.text()
        container = await docker.containers.get((await resp.json())["Name"])
        mounts = (await container.show())["Mounts"]
        anonymous |= {m["Name"] for m in mounts if m["Destination"] == "/cache"}
    assert anonymous
    assert (await client.get("/daemon/v1/kill/vol", headers=auth(token))).status == 200
    listed = (await docker.volumes.list()).get("Volumes") or []
    assert anonymous.isdisjoint(v["Name"] for v in listed)


async def test_a_daemon_spawned_during_a_reconcile_stays_metered(client: Any, token: str) -> None:
    """A reconcile lists the containers, then reads the open runs: a run
    registered in between is not in the list, yet its container runs."""
    app = client.app
    reconciler = app[appkeys.RECONCILER]
    await asyncio.wait_for(reconciler.reconciled.wait(), 30)
    image = await ensure_httpd_image()
    real = reconciler.runtime
    spawned: list[int] = []

    class SpawnAfterListing:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        async def list(self, labels: dict[str, str], **kw: Any) -> Any:
            snapshot = await real.list(labels, **kw)
            spawned.append((await spawn(client, token, name="late", image=image)).status)
            return snapshot

    reconciler.runtime = SpawnAfterListing()
    try:
        report = await reconciler.reconcile()
    finally:
        reconciler.runtime = real
    assert spawned == [200]
    assert report.closed == []
    running = await app[appkeys.LEDGER].running_workloads(app[appkeys.INSTANCE], "daemon")
    assert [w.name for w in running] == ["late"]


async def test_an_image_without_a_command_is_400_and_leaves_nothing(
    client: Any, token: str, settings: Settings, docker: aiodocker.Docker
) -> None:
    image = await ensure_command_image("herder-test/busybox-nocmd:1", [])
    resp = await spawn(client, token, name="nocmd", image=image)
    assert resp.status == 400
    assert image in (await resp.json())["error"]
    instance = instance_id(settings.data_dir)
    label = json.dumps({"label": [f"herder.instance={instance}"]})
    assert await docker.containers.list(all=True, filters=label) == []
    assert await instance_volumes(docker, instance) == []


async def test_kills_of_unknown_names_keep_no_state(client: Any, token: str) -> None:
    for n in range(50):
        resp = await client.get(f"/daemon/v1/kill/nobody{n}?wipe=1", headers=auth(token))
        assert resp.status == 404
    assert not client.app[appkeys.DAEMONS]._locks._locks


async def test_credits_run_down_and_daemons_stop_at_zero(
    client: Any, make_token: TokenMaker, settings: Settings
) -> None:
    image = await ensure_busybox_image()
    rich, poor = make_token(credits=1000), make_token(credits=3)
    assert (await spawn(client, rich, name="rich", image=image)).status == 200
    assert (await spawn(client, poor, name="poor", image=image)).status == 200
    started = time.monotonic()
    before = await remaining(client, rich)

    async def poor_daemon_stopped() -> bool:
        listed = await (await client.get("/daemon/v1/ls", headers=auth(poor))).json()
        return [d["State"] for d in listed] == ["exited"]

    await eventually(poor_daemon_stopped, timeout=15)
    assert await remaining(client, poor) <= 0
    resp = await spawn(client, poor, name="again", image=image)
    assert resp.status == 402 and "credit" in (await resp.json())["error"]

    await asyncio.sleep(max(0.0, 3 - (time.monotonic() - started)))
    elapsed = time.monotonic() - started
    spent = before - await remaining(client, rich)
    assert elapsed - 2 <= spent <= elapsed + 2  # CREDIT_RATE (1) per second
    instance = instance_id(settings.data_dir)
    ledger = client.app[appkeys.LEDGER]
    assert [w.name for w in await ledger.running_workloads(instance)] == ["rich"]


async def test_daemon_removed_behind_our_back_stops_costing(
    client: Any, token: str, settings: Settings, docker: aiodocker.Docker
) -> None:
    image = await ensure_busybox_image()
    name = (await (await spawn(client, token, name="gone", image=image)).json())["Name"]
    ledger = client.app[appkeys.LEDGER]
    instance = instance_id(settings.data_dir)
    await (await docker.containers.get(name)).delete(force=True)

    async def run_closed() -> bool:
        return await ledger.running_workload(instance, "daemon", name) is None

    await eventually(run_closed, timeout=5)
    assert await (await client.get("/daemon/v1/ls", headers=auth(token))).json() == []
    settled = await remaining(client, token)
    await asyncio.sleep(1.5)
    assert await remaining(client, token) == settled


BAD_SPAWNS: list[tuple[dict[str, str], str]] = [
    ({"name": "Upper"}, "name"),
    ({"name": "a/b"}, "name"),
    ({"name": ".."}, "name"),
    ({"name": "a..b"}, "name"),
    ({"name": "a b"}, "name"),
    ({"name": "a\nb"}, "name"),
    ({"name": "etc"}, "reserved"),
    ({"ports": "80"}, "JSON list"),
    ({"ports": "[80"}, "JSON list"),
    ({"ports": "[" * 100_000}, "ports"),
    ({"ports": "[" * 500 + "]" * 500}, "number"),
    ({"ports": "[0]"}, "range"),
    ({"ports": "[65536]"}, "range"),
    ({"ports": '["http"]'}, "number"),
    ({"ports": "[true]"}, "number"),
    ({"ports": json.dumps(list(range(8000, 8017)))}, "at most 16"),
    ({"../escape": "x"}, "file name"),
    ({"/etc/passwd": "x"}, "file name"),
    ({"a/../../b": "x"}, "file name"),
    ({"image": "Bad Image"}, "image"),
    ({"image": "img:tag:more"}, "image"),
    ({"image": "img;rm -rf"}, "image"),
    ({"image": ""}, "image"),
    ({"image": "UPPER/case"}, "image"),  # the engine's 400 became a 503
    ({"image": "Upper"}, "image"),
    ({"image": "herder/Python:bookworm"}, "image"),
]


async def test_bad_input_is_400_and_creates_nothing(
    client: Any, token: str, settings: Settings, docker: aiodocker.Docker
) -> None:
    image = await ensure_busybox_image()
    for override, message in BAD_SPAWNS:
        form = {"name": "ok", "image": image} | override
        resp = await spawn(client, token, **form)
        body = await resp.json()
        assert resp.status == 400, (override, body)
        assert message in body["error"], (override, body)
    for missing in ("name", "image"):
        form = {"name": "ok", "image": image}
        del form[missing]
        resp = await spawn(client, token, **form)
        assert resp.status == 400 and missing in (await resp.json())["error"]

    resp = await asyncio.wait_for(
        spawn(client, token, name="ok", image="herder-test/not-there:1"), 10
    )
    assert resp.status == 404 and "herder-test/not-there:1" in (await resp.json())["error"]

    instance = instance_id(settings.data_dir)
    label = json.dumps({"label": [f"herder.instance={instance}"]})
    assert await docker.containers.list(all=True, filters=label) == []
    assert await instance_volumes(docker, instance) == []
    assert (await spawn(client, "not-a-token", name="ok", image=image)).status == 401


@malformed(MALFORMED_FORMS)
async def test_malformed_form_is_400_and_creates_nothing(
    client: Any,
    token: str,
    settings: Settings,
    docker: aiodocker.Docker,
    body: bytes,
    content_type: str,
    word: str,
) -> None:
    resp = await client.post(
        "/daemon/v1/spawn", data=body, headers={**auth(token), "Content-Type": content_type}
    )
    await assert_refused(resp, word)
    instance = instance_id(settings.data_dir)
    label = json.dumps({"label": [f"herder.instance={instance}"]})
    assert await docker.containers.list(all=True, filters=label) == []
    assert await instance_volumes(docker, instance) == []


async def test_unknown_containers_are_removed_at_start(
    tmp_path: Path, aiohttp_client: Any, docker: aiodocker.Docker
) -> None:
    from herder.app import create_app

    settings = make_settings(tmp_path / "other")
    instance = instance_id(settings.data_dir)
    image = await ensure_busybox_image()
    labels = {
        "herder.managed": "1",
        "herder.kind": "daemon",
        "herder.instance": instance,
        "herder.subject": "ghost@example.org",
        "herder.name": "ghost",
    }
    stray = await docker.containers.run(
        {"Image": image, "Labels": labels, "OpenStdin": True}, name=f"ghost-{instance}"
    )
    # A minion a crash left behind (minions are never in the registry).
    stray_minion = await docker.containers.run(
        {"Image": image, "Labels": labels | {"herder.kind": "minion"}, "OpenStdin": True},
        name=f"minion-{instance}",
    )
    neighbour_labels = labels | {"herder.instance": instance + "-neighbour"}
    neighbour = await docker.containers.run(
        {"Image": image, "Labels": neighbour_labels, "OpenStdin": True},
        name=f"neighbour-{instance}",
    )
    try:
        app = create_app(settings)
        await aiohttp_client(app)
        await asyncio.wait_for(app[appkeys.RECONCILER].reconciled.wait(), 30)
        for gone in (stray, stray_minion):
            with pytest.raises(aiodocker.DockerError):
                await docker.containers.get(gone.id)
        # Another herder's container on the same engine is left alone.
        assert (await docker.containers.get(neighbour.id))._container["State"]["Running"]
    finally:
        await neighbour.delete(force=True)
        await remove_instance_leftovers(docker, instance)
