"""Golems against the real Docker Engine and the real golem image.

The end-to-end test runs the herder and a small page server on the Docker
bridge's gateway address, so Chromium inside the golem container loads the
page, the emet script and opens the relay's WebSockets on this machine. The
golem runs on the herder network, not on that bridge: the address is one of
the host's, which containers on any network reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import pytest
from aiohttp import WSMsgType, web
from sqlalchemy import select

from herder.api import keys as appkeys
from herder.app import create_app
from herder.ledger import Workload
from herder.relay import key_digest
from herder.settings import Settings
from herder.signing import load_keypair
from herder.tokens import TokenService

from .conftest import auth, eventually, make_settings
from .images import ensure_command_image

pytestmark = pytest.mark.docker

GOLEM_IMAGE = "herder/golem:bookworm"
NODE_IMAGE = "herder/node:bookworm"
UNREACHABLE_PAGES = "http://127.0.0.1:9"  # golems in the cheap tests load nothing


@pytest.fixture
async def golem_image(docker: aiodocker.Docker) -> str:
    try:
        await docker.images.inspect(GOLEM_IMAGE)
    except aiodocker.DockerError:
        pytest.fail(f"{GOLEM_IMAGE} is missing; run `herder images build golem`")
    return GOLEM_IMAGE


async def instance_containers(docker: aiodocker.Docker, settings: Settings) -> list[Any]:
    instance = (settings.data_dir / "instance-id").read_text().strip()
    filters = json.dumps({"label": [f"herder.instance={instance}"]})
    return list(await docker.containers.list(all=True, filters=filters))


@dataclass
class ServedHerder:
    settings: Settings
    app: web.Application
    url: str
    http: aiohttp.ClientSession
    runner: web.AppRunner

    async def stop(self) -> None:
        """Shut the herder down; its golems run on."""
        await self.http.close()
        await self.runner.cleanup()

    async def call(self, verb: str, webstrate: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.post(f"{self.url}/golem/v1/{verb}/{webstrate}", **kw) as resp:
            return resp.status, await resp.json()


HerderMaker = Callable[..., Any]


@pytest.fixture
async def herder(
    tmp_path: Path, docker: aiodocker.Docker, golem_image: str
) -> AsyncIterator[HerderMaker]:
    """Start real herders (on `host`, port picked by binding); remove their
    golems afterwards, dumping the logs of golems left running."""
    started: list[ServedHerder] = []

    async def start(
        host: str = "127.0.0.1", data_dir: Path | None = None, **overrides: Any
    ) -> ServedHerder:
        sock = socket.socket()
        sock.bind((host, 0))
        sock.listen(128)
        url = f"http://{host}:{sock.getsockname()[1]}"
        overrides.setdefault("webstrates_url", UNREACHABLE_PAGES)
        overrides.setdefault("golem_image", golem_image)
        data_dir = data_dir or tmp_path / f"herder{len(started)}"
        settings = make_settings(data_dir, public_url=url, **overrides)
        app = create_app(settings)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        one = ServedHerder(settings, app, url, aiohttp.ClientSession(), runner)
        started.append(one)
        return one

    yield start
    for one in started:
        if not one.http.closed:
            await one.stop()
        for container in await instance_containers(docker, one.settings):
            await container.delete(force=True)


def sign(settings: Settings, email: str, credits: int = 1000) -> str:
    service = TokenService(load_keypair(settings.data_dir), settings, ledger=None)  # type: ignore[arg-type]
    return service.create(email, credits, 1)[0]


async def workloads(herder: ServedHerder) -> list[Any]:
    async with herder.app[appkeys.LEDGER].read() as conn:
        return list((await conn.execute(select(Workload).order_by(Workload.id))).all())


# -- emet --------------------------------------------------------------------------


async def test_emet_script_has_the_public_url(herder: HerderMaker) -> None:
    one = await herder()
    for path in ("/", "/golem/v1/"):
        async with one.http.get(one.url + path) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/javascript"
            script = await resp.text()
        assert f'var herder = "{one.url}";' in script
        assert f"curl {one.url}/golem/v1/reset/<webstrate>" in script
        assert "__HERDER_URL__" not in script
        assert '".golem, #emet"' in script


EMET_HARNESS = r"""
const calls = [];
globalThis.window = globalThis;
globalThis.location = { pathname: "/my-doc/some/page" };
globalThis.navigator = { userAgent: process.env.UA, webdriver: false };
globalThis.fetch = (url, options) => {
  calls.push([options.method, url]);
  return Promise.resolve({ ok: true, status: 201, json: () => Promise.resolve({}) });
};
const golemCode = { textContent:
  "globalThis.ran = [emet.webstrate, emet.isGolem, typeof emet.controlSocket, typeof emet.connectTo];" };
globalThis.document = {
  readyState: "complete",
  addEventListener() {},
  querySelector(selector) { globalThis.selector = selector; return golemCode; },
};
globalThis.WebSocket = function () {};
(0, eval)(process.env.EMET);
setTimeout(() => console.log(JSON.stringify({
  calls, ran: globalThis.ran || null, selector: globalThis.selector || null,
})), 100);
"""


async def run_emet_in_node(docker: aiodocker.Docker, one: ServedHerder, user_agent: str) -> Any:
    """Run the served emet script in Node with a browser's globals stubbed."""
    async with one.http.get(one.url + "/") as resp:
        script = await resp.text()
    container = await docker.containers.create(
        {
            "Image": NODE_IMAGE,
            "Cmd": ["node", "-e", EMET_HARNESS],
            "Env": [f"EMET={script}", f"UA={user_agent}"],
            "Labels": {"herder.managed": "1", "herder.instance": one.app[appkeys.INSTANCE]},
            "NetworkDisabled": True,
            "HostConfig": {"CapDrop": ["ALL"], "Memory": 256 << 20},
        }
    )
    try:
        await container.start()
        result = await container.wait(timeout=60)
        output = "".join(await container.log(stdout=True, stderr=True))
        assert result["StatusCode"] == 0, output
        return json.loads(output.strip().splitlines()[-1])
    finally:
        await container.delete(force=True)


async def test_emet_in_a_browser_spawns_and_in_a_golem_runs_the_golem_code(
    herder: HerderMaker, docker: aiodocker.Docker
) -> None:
    try:
        await docker.images.inspect(NODE_IMAGE)
    except aiodocker.DockerError:
        pytest.fail(f"{NODE_IMAGE} is missing; run `herder images build node`")
    one = await herder()
    browser = await run_emet_in_node(
        docker, one, "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0 Safari/537.36"
    )
    assert browser == {
        "calls": [["POST", f"{one.url}/golem/v1/spawn/my-doc"]],
        "ran": None,
        "selector": None,
    }
    golem = await run_emet_in_node(
        docker, one, "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/120.0 Safari/537.36"
    )
    assert golem == {
        "calls": [],
        "ran": ["my-doc", True, "function", "function"],
        "selector": ".golem, #emet",
    }


# -- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize("webstrate", ["a.b", "x" * 65, "sp%20ace", "%C3%A4", "a%2Fb"])
async def test_bad_webstrate_ids_are_400_and_create_nothing(
    herder: HerderMaker, docker: aiodocker.Docker, webstrate: str
) -> None:
    one = await herder()
    for verb in ("spawn", "reset", "kill"):
        for method in ("GET", "POST"):
            url = f"{one.url}/golem/v1/{verb}/{webstrate}"
            async with one.http.request(method, url) as resp:
                assert resp.status == 400, (verb, method)
                assert "webstrate ids" in (await resp.json())["error"]
    assert await instance_containers(docker, one.settings) == []


async def test_missing_golem_image_is_404(herder: HerderMaker, docker: aiodocker.Docker) -> None:
    one = await herder(golem_image="herder/no-such-golem:none")
    status, body = await one.call("spawn", "ws1")
    assert status == 404
    assert "herder/no-such-golem:none" in body["error"]
    assert await instance_containers(docker, one.settings) == []
    assert await workloads(one) == []


async def test_reset_and_kill_of_unknown_golem_are_404(herder: HerderMaker) -> None:
    one = await herder()
    for verb in ("reset", "kill"):
        status, body = await one.call(verb, "nobody-here")
        assert status == 404
        assert "no golem" in body["error"]


# -- spawn, one per webstrate, cap, kill --------------------------------------------


async def test_ten_concurrent_spawns_one_container_cap_and_kill(
    herder: HerderMaker, docker: aiodocker.Docker
) -> None:
    one = await herder(golem_cap=1, golem_memory_mb=768, golem_cpus=0.5, golem_pids=300)
    results = await asyncio.gather(*(one.call("spawn", "shared-doc") for _ in range(10)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 9 + [201]
    ids = {body["Id"] for _, body in results}
    assert len(ids) == 1
    containers = await instance_containers(docker, one.settings)
    assert [c.id for c in containers] == list(ids)

    data = await containers[0].show()
    labels = data["Config"]["Labels"]
    assert labels["herder.managed"] == "1"
    assert labels["herder.kind"] == "golem"
    assert labels["herder.name"] == "shared-doc"
    assert labels["herder.subject"] == "anonymous"
    assert labels["herder.instance"] == one.app[appkeys.INSTANCE]
    # The page with the golem's own secret in its fragment; only its digest is a label.
    (page,) = [e for e in data["Config"]["Env"] if e.startswith("GOLEM_URL=")]
    assert page.startswith(f"GOLEM_URL={UNREACHABLE_PAGES}/shared-doc#herder-golem-key=")
    key = page.split("#herder-golem-key=", 1)[1]
    assert len(key) >= 40 and labels["herder.golem-key-sha256"] == key_digest(key)
    assert key not in json.dumps(labels)
    assert data["Config"]["User"] == "1000:1000"
    host = data["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (768 << 20, 500_000_000, 300)
    assert not host.get("Privileged")
    bindings = host["PortBindings"]["9222/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    published = data["NetworkSettings"]["Ports"]["9222/tcp"]
    assert {b["HostIp"] for b in published} == {"127.0.0.1"}

    async with one.http.get(f"{one.url}/golem/v1/ls") as resp:
        assert resp.status == 200
        listed = await resp.json()
    assert len(listed) == 1
    assert listed[0]["Webstrate"] == "shared-doc"
    assert listed[0]["Id"] in ids
    assert listed[0]["State"] == "running"
    assert listed[0]["DebugPort"] == int(published[0]["HostPort"])

    rows = await workloads(one)
    assert [(r.kind, r.name, r.state, r.metered) for r in rows] == [
        ("golem", "shared-doc", "running", False)
    ]

    # the cap: a second webstrate is refused, and nothing is created for it
    status, body = await one.call("spawn", "another-doc")
    assert status == 429
    assert "cap of 1" in body["error"]
    assert len(await instance_containers(docker, one.settings)) == 1

    status, body = await one.call("kill", "shared-doc")
    assert status == 200
    assert body["Webstrate"] == "shared-doc" and body["Id"] in ids
    assert await instance_containers(docker, one.settings) == []
    assert [r.state for r in await workloads(one)] == ["stopped"]
    status, _ = await one.call("kill", "shared-doc")
    assert status == 404


async def test_token_required_meters_and_only_the_owner_resets(
    herder: HerderMaker, docker: aiodocker.Docker
) -> None:
    one = await herder(golem_require_token=True)
    status, body = await one.call("spawn", "metered-doc")
    assert status == 401
    assert await instance_containers(docker, one.settings) == []

    owner = sign(one.settings, "owner@example.org")
    other = sign(one.settings, "other@example.org")
    status, first = await one.call("spawn", "metered-doc", headers=auth(owner))
    assert status == 201
    (container,) = await instance_containers(docker, one.settings)
    labels = (await container.show())["Config"]["Labels"]
    assert labels["herder.subject"] == "owner@example.org"
    assert labels["herder.jti"]
    rows = await workloads(one)
    assert [(r.kind, r.subject, r.metered, r.state, r.container_id) for r in rows] == [
        ("golem", "owner@example.org", True, "running", first["Id"])
    ]

    for verb in ("reset", "kill"):
        status, _ = await one.call(verb, "metered-doc", headers=auth(other))
        assert status == 404, verb

    status, second = await one.call("reset", "metered-doc", headers=auth(owner))
    assert status == 200
    assert second["Webstrate"] == "metered-doc" and second["Id"] != first["Id"]
    assert [c.id for c in await instance_containers(docker, one.settings)] == [second["Id"]]
    rows = await workloads(one)
    assert [(r.container_id, r.state) for r in rows] == [
        (first["Id"], "stopped"),
        (second["Id"], "running"),
    ]

    status, _ = await one.call("kill", "metered-doc", headers=auth(owner))
    assert status == 200
    assert await instance_containers(docker, one.settings) == []
    assert [r.state for r in await workloads(one)] == ["stopped", "stopped"]


async def test_metered_golem_is_charged_and_stopped_when_credits_run_out(
    herder: HerderMaker, docker: aiodocker.Docker
) -> None:
    one = await herder(golem_require_token=True, metering_interval="0.2")
    poor = sign(one.settings, "poor@example.org", credits=2)
    status, golem = await one.call("spawn", "poor-doc", headers=auth(poor))
    assert status == 201
    ledger = one.app[appkeys.LEDGER]
    for _ in range(100):
        container = await docker.containers.get(golem["Id"])
        if not (await container.show())["State"]["Running"]:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the golem of a subject without credits kept running")
    balance = await ledger.balance("poor@example.org")
    assert balance.charged >= 2 and balance.remaining <= 0
    assert await ledger.audit("poor@example.org") == balance
    status, _ = await one.call("spawn", "other-doc", headers=auth(poor))
    assert status == 402


# -- golems and the reconciler -------------------------------------------------------

SLEEPER_IMAGE = "herder-test/busybox-sleep:1"


async def rows_by_name(one: ServedHerder) -> list[tuple[str, str, str]]:
    return [(r.name, r.state, r.container_id) for r in await workloads(one)]


async def test_restart_closes_vanished_golems_removes_unknown_ones_and_meters_the_rest(
    herder: HerderMaker, docker: aiodocker.Docker, tmp_path: Path
) -> None:
    """A golem's container is cheap here (a sleeping busybox): the herder
    treats any image as the golem image."""
    image = await ensure_command_image(SLEEPER_IMAGE, ["sleep", "3600"])
    shared = tmp_path / "shared"
    options: dict[str, Any] = {
        "golem_image": image,
        "golem_require_token": True,
        "metering_interval": "0.2",
    }
    one = await herder(data_dir=shared, **options)
    token = sign(one.settings, "owner@example.org")
    ids = {}
    for doc in ("kept-doc", "gone-doc"):
        status, golem = await one.call("spawn", doc, headers=auth(token))
        assert status == 201
        ids[doc] = golem["Id"]
    await one.stop()

    # While no herder runs: one golem is removed by hand, and a container
    # with this instance's golem labels that nobody registered appears.
    await (await docker.containers.get(ids["gone-doc"])).delete(force=True)
    instance = (shared / "instance-id").read_text().strip()
    stray = await docker.containers.run(
        {
            "Image": image,
            "Labels": {
                "herder.managed": "1",
                "herder.kind": "golem",
                "herder.instance": instance,
                "herder.name": "stray-doc",
            },
        },
        name=f"golem-stray-doc-{instance}",
    )

    two = await herder(data_dir=shared, **options)
    await asyncio.wait_for(two.app[appkeys.RECONCILER].reconciled.wait(), 30)
    assert sorted(await rows_by_name(two)) == [
        ("gone-doc", "stopped", ids["gone-doc"]),
        ("kept-doc", "running", ids["kept-doc"]),
    ]
    assert [c.id for c in await instance_containers(docker, two.settings)] == [ids["kept-doc"]]
    with pytest.raises(aiodocker.DockerError):
        await stray.show()
    async with two.http.get(f"{two.url}/golem/v1/ls") as resp:
        assert [g["Webstrate"] for g in await resp.json()] == ["kept-doc"]

    # The kept golem is metered; removed behind the herder's back, it stops
    # costing at once (Docker's event stream, no polling).
    ledger = two.app[appkeys.LEDGER]
    charged = (await ledger.balance("owner@example.org")).charged
    await eventually(
        lambda: _charged_more(ledger, charged), what="the surviving golem was not metered"
    )
    await (await docker.containers.get(ids["kept-doc"])).delete(force=True)

    async def closed() -> bool:
        return all(state == "stopped" for _, state, _ in await rows_by_name(two))

    await eventually(closed, what="the golem removed by hand kept an open run")
    settled = (await ledger.balance("owner@example.org")).charged
    await asyncio.sleep(1.0)  # five metering ticks
    assert (await ledger.balance("owner@example.org")).charged == settled


async def _charged_more(ledger: Any, than: int) -> bool:
    return bool((await ledger.balance("owner@example.org")).charged > than)


async def test_an_anonymous_golem_restarted_by_docker_keeps_running(
    herder: HerderMaker, docker: aiodocker.Docker
) -> None:
    """Anonymous golems are never metered, so a restart must not stop them
    for want of credits: it opens a new unmetered run."""
    image = await ensure_command_image(SLEEPER_IMAGE, ["sleep", "3600"])
    one = await herder(golem_image=image)
    status, golem = await one.call("spawn", "restarted-doc")
    assert status == 201
    await asyncio.wait_for(one.app[appkeys.RECONCILER].reconciled.wait(), 30)
    container = await docker.containers.get(golem["Id"])
    await container.restart(timeout=0)

    async def reopened() -> bool:
        return [s for _, s, _ in await rows_by_name(one)] == ["stopped", "running"]

    await eventually(reopened, what="the restarted golem got no new run")
    assert (await container.show())["State"]["Running"]
    assert [r.metered for r in await workloads(one)] == [False, False]


# -- end to end: code in Chromium, inside the container, echoes a minion ------------

GOLEM_PAGE = """<!doctype html>
<html>
<head><meta charset="utf-8"><title>{webstrate}</title>
<script src="{herder}/"></script></head>
<body>
<p>a test webstrate</p>
<pre class="golem">
emet.controlSocket(function (event) {{
  if (event.Event !== "minion-connected") return;
  var channel = emet.connectTo(event.ID);
  channel.onmessage = function (message) {{
    if (typeof message.data === "string") {{
      channel.send("echo from " + navigator.userAgent + ": " + message.data);
    }} else {{
      channel.send(message.data);
    }}
  }};
}});
</pre>
</body>
</html>
"""


def bridge_gateway(network: dict[str, Any]) -> str:
    for config in network.get("IPAM", {}).get("Config") or []:
        if config.get("Gateway"):
            return str(config["Gateway"])
        if config.get("Subnet") and ":" not in config["Subnet"]:
            return str(next(ipaddress.ip_network(config["Subnet"]).hosts()))
    pytest.fail("cannot tell the Docker bridge's gateway address")


@contextlib.asynccontextmanager
async def page_server(host: str, herder: dict[str, str]) -> AsyncIterator[str]:
    """Serve the test webstrate at `/<webstrate>`; `herder["url"]` is read per request."""

    async def page(request: web.Request) -> web.Response:
        webstrate = request.match_info["webstrate"]
        return web.Response(
            text=GOLEM_PAGE.format(webstrate=webstrate, herder=herder["url"]),
            content_type="text/html",
        )

    app = web.Application()
    app.router.add_get("/{webstrate}", page)
    app.router.add_get("/{webstrate}/", page)
    sock = socket.socket()
    sock.bind((host, 0))
    sock.listen(16)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()


@pytest.mark.slow
async def test_golem_echoes_an_ad_hoc_minion_end_to_end(
    herder: HerderMaker, docker: aiodocker.Docker
) -> None:
    network = await docker.networks.get("bridge")
    gateway = bridge_gateway(await network.show())
    webstrate = "e2e-echo"
    herder_url: dict[str, str] = {}
    async with page_server(gateway, herder_url) as pages:
        one = await herder(host=gateway, webstrates_url=pages, golem_wait=60)
        herder_url["url"] = one.url
        status, spawned = await one.call("spawn", webstrate)
        assert status == 201, spawned
        try:
            data = await docker.containers.container(spawned["Id"]).show()
            assert list(data["NetworkSettings"]["Networks"]) == [one.settings.network]
            for _ in range(240):
                async with one.http.get(f"{one.url}/golem/v1/ls") as resp:
                    listed = {g["Webstrate"]: g for g in await resp.json()}
                if listed[webstrate]["Connected"]:
                    break
                assert listed[webstrate]["State"] == "running", listed
                await asyncio.sleep(0.5)
            else:
                pytest.fail("the golem never opened its control socket")

            minion = await one.http.ws_connect(
                f"{one.url.replace('http', 'ws')}/minion/v1/connect/{webstrate}?type=probe"
            )
            msg = await minion.receive(timeout=30)
            assert msg.type == WSMsgType.TEXT and json.loads(msg.data) == {
                "Event": "golem-connected"
            }
            await minion.send_str("hello golem")
            msg = await minion.receive(timeout=30)
            assert msg.type == WSMsgType.TEXT
            assert msg.data.startswith("echo from ") and msg.data.endswith(": hello golem")
            assert "HeadlessChrome" in msg.data  # code running in the golem's Chromium
            await minion.send_bytes(b"\x00\x01binary\xff")
            msg = await minion.receive(timeout=30)
            assert (msg.type, msg.data) == (WSMsgType.BINARY, b"\x00\x01binary\xff")

            status, killed = await one.call("kill", webstrate)
            assert status == 200 and killed["Id"] == spawned["Id"]
            assert await instance_containers(docker, one.settings) == []
            msg = await minion.receive(timeout=10)
            assert json.loads(msg.data) == {"Event": "golem-disconnected"}
            msg = await minion.receive(timeout=10)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
        except BaseException:
            with contextlib.suppress(Exception):
                logs = await docker.containers.container(spawned["Id"]).log(
                    stdout=True, stderr=True, tail=200
                )
                print("golem logs:\n" + "".join(logs))
            raise


def golem_key(data: dict[str, Any]) -> str:
    (page,) = [e for e in data["Config"]["Env"] if e.startswith("GOLEM_URL=")]
    return page.split("#herder-golem-key=", 1)[1]


async def ws_status(http: aiohttp.ClientSession, url: str) -> int:
    """The status a WebSocket upgrade gets (101 when it is accepted)."""
    try:
        ws = await http.ws_connect(url)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


@pytest.mark.slow
async def test_a_squatter_is_refused_and_the_golem_is_served(
    herder: HerderMaker, docker: aiodocker.Docker
) -> None:
    network = await docker.networks.get("bridge")
    gateway = bridge_gateway(await network.show())
    webstrate = "squatted-doc"
    herder_url: dict[str, str] = {}
    async with page_server(gateway, herder_url) as pages:
        one = await herder(host=gateway, webstrates_url=pages, golem_wait=60)
        herder_url["url"] = one.url
        ws_base = one.url.replace("http", "ws")
        control = f"{ws_base}/golem/v1/connect/{webstrate}"
        status, spawned = await one.call("spawn", webstrate)
        assert status == 201, spawned
        try:
            # Before the golem connects: no key, a wrong key, another golem's key.
            assert await ws_status(one.http, control) == 401
            assert await ws_status(one.http, control + "?key=guessed") == 401
            for _ in range(240):
                async with one.http.get(f"{one.url}/golem/v1/ls") as resp:
                    listed = {g["Webstrate"]: g for g in await resp.json()}
                if listed[webstrate]["Connected"]:
                    break
                await asyncio.sleep(0.5)
            else:
                pytest.fail("the golem never opened its control socket")
            # Once it is connected: still refused, and data channels too.
            assert await ws_status(one.http, control) == 401
            channel = f"{ws_base}/golem/v1/connect-to/{webstrate}/anyone"
            assert await ws_status(one.http, channel) == 401
            assert await ws_status(one.http, channel + "?key=guessed") == 401
            # Even the golem's own key does not displace the live golem.
            key = golem_key(await docker.containers.container(spawned["Id"]).show())
            assert await ws_status(one.http, f"{control}?key={key}") == 409

            # The golem is the one serving the webstrate's minions.
            minion = await one.http.ws_connect(f"{ws_base}/minion/v1/connect/{webstrate}?type=t")
            msg = await minion.receive(timeout=30)
            assert json.loads(msg.data) == {"Event": "golem-connected"}
            await minion.send_str("who are you")
            msg = await minion.receive(timeout=30)
            assert msg.data.startswith("echo from ") and "HeadlessChrome" in msg.data
            await minion.close()
        except BaseException:
            with contextlib.suppress(Exception):
                logs = await docker.containers.container(spawned["Id"]).log(
                    stdout=True, stderr=True, tail=200
                )
                print("golem logs:\n" + "".join(logs))
            raise
