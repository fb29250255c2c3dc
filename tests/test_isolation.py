"""Containers of different subjects cannot reach each other directly.

Daemons and golems run on the herder network, a bridge with inter-container
traffic off: one subject's daemon cannot open a connection to another
subject's daemon (which would bypass the proxy and its token check) or to a
golem's DevTools port (full control of its browser). The host still reaches
them all (the proxy, published ports), and they still reach the host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiodocker
import pytest

from herder.api import keys as appkeys
from herder.settings import Settings

from .conftest import TokenMaker, auth, eventually, make_settings
from .images import ensure_command_image, ensure_httpd_image
from .script_image import ensure_script_image
from .test_daemons import (
    get_from,
    remove_what_the_test_made,  # noqa: F401  (autouse: removes what the test made)
)
from .test_golems import page_server

pytestmark = pytest.mark.docker

# A stand-in golem: serves a page on the DevTools port, as uid 1000 without capabilities.
DEVTOOLS_IMAGE = "herder-test/busybox-devtools:1"
DEVTOOLS_PAGE = "devtools-of-the-golem"
DEVTOOLS_CMD = [
    "sh",
    "-c",
    f"echo {DEVTOOLS_PAGE} > /tmp/index.html && exec httpd -f -p 9222 -h /tmp",
]

# Fetches every URL of /minion/targets, then idles: its log says what it reached.
# (`wget -T` of Debian's busybox-static 1.35 segfaults: `timeout` bounds it instead.)
PROBE_SCRIPT = """\
for url in $(cat /minion/targets); do
  if /bin/busybox timeout 4 /bin/busybox wget -q -O /tmp/page "$url"; then
    echo "REACHED $url $(cat /tmp/page)"
  else
    echo "BLOCKED $url"
  fi
done
echo PROBE-DONE
exec sleep 3600
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path / "data",
        daemon_bind_address="127.0.0.1",
        golem_image=DEVTOOLS_IMAGE,
        webstrates_url="http://127.0.0.1:9",
    )


async def spawn_daemon(client: Any, token: str, **form: str) -> dict[str, Any]:
    resp = await client.post("/daemon/v1/spawn", data=form, headers=auth(token))
    assert resp.status == 200, await resp.text()
    reply: dict[str, Any] = await resp.json()
    return reply


async def wait_for_log(client: Any, token: str, name: str, marker: str) -> str:
    log = ""

    async def logged() -> bool:
        nonlocal log
        resp = await client.get(f"/daemon/v1/logs/{name}", headers=auth(token))
        assert resp.status == 200, await resp.text()
        log = await resp.text()
        return marker in log

    await eventually(logged, timeout=60)
    return log


async def test_a_daemon_reaches_neither_another_subjects_daemon_nor_a_golem(
    client: Any, make_token: TokenMaker, settings: Settings, docker: aiodocker.Docker
) -> None:
    httpd = await ensure_httpd_image()
    probe_image = await ensure_script_image()
    await ensure_command_image(DEVTOOLS_IMAGE, DEVTOOLS_CMD)
    runtime = client.app[appkeys.RUNTIME]
    alice, bob = make_token(), make_token()

    # Alice's web daemon and a golem, both reachable from the host.
    web_a = await spawn_daemon(
        client, alice, name="site", image=httpd, ports="[80]", **{"index.html": "alice-secret"}
    )
    assert await get_from(web_a["Ports"]["80"]) == (200, "alice-secret")
    resp = await client.get(f"/daemon/v1/proxy/{web_a['Name']}/")
    assert (resp.status, await resp.text()) == (200, "alice-secret")
    resp = await client.post("/golem/v1/spawn/isolated-doc")
    assert resp.status == 201, await resp.text()
    golem = await resp.json()
    assert await get_from(golem["DebugPort"]) == (200, DEVTOOLS_PAGE + "\n")
    golem_info = await runtime.inspect(golem["Id"])
    assert golem_info is not None and golem_info.address
    network = next(iter(golem_info.raw["NetworkSettings"]["Networks"].values()))

    # Bob's daemon tries both by their addresses, and a page on the host.
    async with page_server(network["Gateway"], {"url": "unused"}) as pages:
        host_page = f"{pages}/on-the-host"
        targets = [f"http://{web_a['Address']}/", f"http://{golem_info.address}:9222/", host_page]
        probe = await spawn_daemon(
            client,
            bob,
            name="probe",
            image=probe_image,
            **{"run.sh": PROBE_SCRIPT, "targets": "\n".join(targets) + "\n"},
        )
        log = await wait_for_log(client, bob, probe["Name"], "PROBE-DONE")
    assert f"REACHED {host_page} <!doctype html>" in log, log  # Bob's daemon has a network
    assert f"BLOCKED {targets[0]}" in log, log
    assert f"BLOCKED {targets[1]}" in log, log
    assert "alice-secret" not in log and DEVTOOLS_PAGE not in log

    # All three are on the herder network, whose bridge keeps them apart.
    for ref in (web_a["Name"], golem["Id"], probe["Name"]):
        data = (await docker.containers.get(ref))._container
        assert data["HostConfig"]["NetworkMode"] == settings.network
        assert list(data["NetworkSettings"]["Networks"]) == [settings.network]
    herder_net = await (await docker.networks.get(settings.network)).show()
    assert herder_net["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    assert herder_net["Labels"]["herder.managed"] == "1"

    # The proxy and the published port still work after all that.
    resp = await client.get(f"/daemon/v1/proxy/{web_a['Name']}/")
    assert (resp.status, await resp.text()) == (200, "alice-secret")
    assert await get_from(web_a["Ports"]["80"]) == (200, "alice-secret")
    resp = await client.get("/daemon/v1/ls", headers=auth(alice))
    assert [d["Names"] for d in await resp.json()] == [["/" + web_a["Name"]]]
