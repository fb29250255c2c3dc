"""DockerRuntime's long-lived service verbs against the real engine."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import aiodocker
import aiohttp
import pytest

from herder.errors import ImageNotFound
from herder.runtime import DockerRuntime
from herder.runtime.base import ServiceSpec

from .conftest import INSTANCE_PREFIX
from .images import ensure_busybox_image

pytestmark = pytest.mark.docker


@pytest.fixture
async def runtime(docker: object) -> AsyncIterator[DockerRuntime]:
    runtime = DockerRuntime("unix:///var/run/docker.sock")
    yield runtime
    await runtime.close()


def _labels() -> dict[str, str]:
    return {
        "herder.managed": "1",
        "herder.kind": "daemon",
        "herder.instance": INSTANCE_PREFIX + "runtime",
        "herder.name": "rt",
    }


async def test_service_with_files_ports_and_volume(runtime: DockerRuntime) -> None:
    image = await ensure_busybox_image()
    name = f"rt-{secrets.token_hex(4)}"
    volume = f"herder-test-{name}"
    spec = ServiceSpec(
        name=name,
        image=image,
        labels=_labels(),
        ports=(80,),
        bind_address="127.0.0.1",
        volume=volume,
        mounts=(f"/{name}", "/minion"),
        files={"index.html": b"hello from the volume", "sub/dir.txt": b"x"},
        cmd=("httpd", "-f", "-p", "80", "-h", "/minion"),
    )
    events: list[str] = []

    async def watch() -> None:
        stream = runtime.events({"herder.instance": INSTANCE_PREFIX + "runtime"})
        async with aclosing(stream):
            async for event in stream:
                if event.id == info.id:
                    events.append(event.action)
                    if event.action == "destroy":
                        return

    info = await runtime.run_service(spec)
    watcher = asyncio.create_task(watch())
    try:
        assert info.state == "running" and info.name == name
        assert set(info.ports) == {"80"}
        async with aiohttp.ClientSession() as session:
            for _ in range(50):
                try:
                    async with session.get(f"http://127.0.0.1:{info.ports['80']}/") as resp:
                        assert await resp.text() == "hello from the volume"
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("httpd never answered")
        listed = await runtime.list({"herder.instance": INSTANCE_PREFIX + "runtime"})
        assert info.id in {c.id for c in listed}
        assert await runtime.inspect(info.id[:12]) is None  # prefixes are not exact
        await runtime.stop(info.id, timeout=1)
        assert (await runtime.inspect(name)).state == "exited"  # type: ignore[union-attr]
        assert (await runtime.start(name)).state == "running"  # type: ignore[union-attr]
    finally:
        await runtime.remove(info.id)
        await runtime.remove(info.id)  # idempotent
        await asyncio.wait_for(watcher, 10)
        await runtime.remove_volume(volume)
        await runtime.remove_volume(volume)
    assert "start" in events and "die" in events and events[-1] == "destroy"
    assert await runtime.inspect(name) is None


async def test_missing_image_is_a_clear_404(runtime: DockerRuntime) -> None:
    spec = ServiceSpec(
        name=f"rt-{secrets.token_hex(4)}", image="herder/nope:missing", labels=_labels()
    )
    with pytest.raises(ImageNotFound, match="herder/nope:missing"):
        await runtime.run_service(spec)


async def _networks_named(docker: aiodocker.Docker, name: str) -> list[dict[str, Any]]:
    listed = await docker.networks.list(filters={"name": name})
    return [n for n in listed if n["Name"] == name]


async def test_network_is_made_once_by_racing_herders_and_again_when_removed(
    docker: aiodocker.Docker,
) -> None:
    image = await ensure_busybox_image()
    network = f"{INSTANCE_PREFIX}net-{secrets.token_hex(4)}"  # the session sweep knows it
    runtimes = [DockerRuntime("unix:///var/run/docker.sock") for _ in range(6)]
    try:
        # The engine's duplicate check is not atomic: racing creates make several.
        await asyncio.gather(*(r.ensure_network(network) for r in runtimes))
        found = await _networks_named(docker, network)
        assert len(found) == 1
        details = await (await docker.networks.get(found[0]["Id"])).show()
        assert details["Driver"] == "bridge"
        assert details["Options"]["com.docker.network.bridge.enable_icc"] == "false"
        assert details["Labels"] == {"herder.managed": "1"}
        await asyncio.gather(*(r.ensure_network(network) for r in runtimes))  # idempotent
        assert [n["Id"] for n in await _networks_named(docker, network)] == [found[0]["Id"]]

        # Removed behind the herder's back: the next service start makes it again.
        await (await docker.networks.get(found[0]["Id"])).delete()
        spec = ServiceSpec(
            name=f"rt-{secrets.token_hex(4)}",
            image=image,
            labels=_labels(),
            cmd=("sleep", "30"),
            network=network,
        )
        info = await runtimes[0].run_service(spec)
        try:
            assert info.state == "running"
            networks = info.raw["NetworkSettings"]["Networks"]
            assert list(networks) == [network] and info.address == networks[network]["IPAddress"]
            assert info.raw["HostConfig"]["NetworkMode"] == network
        finally:
            await runtimes[0].remove(info.id)
        assert len(await _networks_named(docker, network)) == 1
    finally:
        for runtime in runtimes:
            await runtime.close()
        for made in await _networks_named(docker, network):
            await (await docker.networks.get(made["Id"])).delete()
