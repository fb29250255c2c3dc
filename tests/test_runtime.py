"""DockerRuntime's long-lived service verbs against the real engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import aiodocker
import aiohttp
import pytest

from herder.errors import ImageNotFound
from herder.runtime import DockerRuntime
from herder.runtime.base import RunSpec, ServiceSpec

from .conftest import INSTANCE_PREFIX
from .images import BUSYBOX_IMAGE, ensure_busybox_image

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


# -- one-shot runs cancelled (a request cancelled at shutdown) ------------------------


def _minion_spec(label: str, script: bytes) -> RunSpec:
    return RunSpec(
        image=BUSYBOX_IMAGE,
        files={"main.sh": script},
        labels={
            "herder.managed": "1",
            "herder.kind": "minion",
            "herder.instance": INSTANCE_PREFIX + "runtime",
            "herder.test": label,
        },
        memory_bytes=64 << 20,
        nano_cpus=500_000_000,
        pids=32,
        network=None,
        timeout=60,
        output_limit=1024,
        output_file=None,
        output_file_limit=1 << 20,
        tmp_bytes=1 << 20,
        workdir="/minion",
        env={},
        cmd=("sh", "/minion/main.sh"),
    )


async def _labelled(docker: aiodocker.Docker, label: str) -> list[Any]:
    filters = json.dumps({"label": [f"herder.test={label}"]})
    return list(await docker.containers.list(all=True, filters=filters))


async def test_a_run_cancelled_as_the_runtime_closes_leaves_no_container(
    docker: aiodocker.Docker,
) -> None:
    """Shutdown: the request is cancelled, then the runtime is closed. The
    removal the cancel started finishes before the clients close."""
    await ensure_busybox_image()
    label = "closing-" + secrets.token_hex(3)
    runtime = DockerRuntime("unix:///var/run/docker.sock")
    run = asyncio.create_task(runtime.run_once(_minion_spec(label, b"sleep 30\n")))
    await asyncio.sleep(2)  # well into the run
    assert await _labelled(docker, label)
    run.cancel()
    await asyncio.sleep(0)
    await runtime.close()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    assert await _labelled(docker, label) == []


@pytest.mark.parametrize("delay", [0.0, 0.005, 0.02, 0.05])
async def test_a_run_cancelled_while_its_container_is_created_leaves_none(
    runtime: DockerRuntime, docker: aiodocker.Docker, delay: float
) -> None:
    await ensure_busybox_image()
    label = "creating-" + secrets.token_hex(3)
    run = asyncio.create_task(runtime.run_once(_minion_spec(label, b"sleep 5\n")))
    await asyncio.sleep(delay)
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    for _ in range(200):  # the removal runs on after the cancel (a start first)
        if not await _labelled(docker, label):
            break
        await asyncio.sleep(0.1)
    assert await _labelled(docker, label) == []
