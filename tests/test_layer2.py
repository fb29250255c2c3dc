"""A root daemon can neither scan nor spoof the herder bridge at layer 2.

Inter-container traffic being off stops IP between containers, not ARP: a
daemon with raw sockets (Docker's default NET_RAW) found every other
tenant's daemon and the gateway by ARP, and by telling the gateway that the
victim's address was its own it cut the victim off and read a request the
herder proxied to it. Daemons keep no NET_RAW (`DAEMON_CAPABILITIES`).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from herder.settings import Settings

from .conftest import TokenMaker, make_settings
from .images import ensure_httpd_image, ensure_root_python_image
from .test_daemons import (
    remove_what_the_test_made,  # noqa: F401  (autouse: removes what the test made)
)
from .test_isolation import spawn_daemon, wait_for_log

pytestmark = pytest.mark.docker

ATTACK = (Path(__file__).parent / "attacks" / "arp.py").read_text()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data", daemon_bind_address="127.0.0.1")


async def proxied(client: Any, name: str, query: str) -> tuple[int, str]:
    try:
        async with asyncio.timeout(5):
            resp = await client.get(f"/daemon/v1/proxy/{name}/?{query}")
            return resp.status, await resp.text()
    except TimeoutError:
        return 0, "timed out"


async def test_a_root_daemon_finds_and_captures_nothing_of_another_tenant(
    client: Any, make_token: TokenMaker, docker: aiodocker.Docker
) -> None:
    httpd = await ensure_httpd_image()
    attacker_image = await ensure_root_python_image()
    alice, mallory = make_token(), make_token()
    victim = await spawn_daemon(
        client, alice, name="bank", image=httpd, ports="[80]", **{"index.html": "alice-page"}
    )
    # The proxy's keep-alive connection to the victim exists before the spoof.
    assert await proxied(client, victim["Name"], "warm=1") == (200, "alice-page")
    data = (await docker.containers.get(victim["Name"]))._container
    gateway = next(iter(data["NetworkSettings"]["Networks"].values()))["Gateway"]
    marker = "secret-" + uuid.uuid4().hex
    plan = {
        "scan": [gateway, victim["Address"]],
        "gateway": gateway,
        "victim": victim["Address"],
        "marker": marker,
        "seconds": 6,
    }
    attacker = await spawn_daemon(
        client,
        mallory,
        name="arp",
        image=attacker_image,
        **{"main.py": ATTACK, "plan.json": json.dumps(plan)},
    )
    info = (await docker.containers.get(attacker["Name"]))._container
    assert info["Config"]["User"] == "root"

    assert info["HostConfig"]["CapDrop"] == ["ALL"]

    # Once the spoof is under way (or the attack gave up), the victim is asked
    # for a page with the marker in its query string, through the proxy.
    log = await wait_for_log(client, mallory, attacker["Name"], "ING")  # SPOOFING or NOTHING
    if "SPOOFING" in log:
        await asyncio.sleep(1.5)  # the gateway's entry for the victim is overwritten
    answers = [await proxied(client, victim["Name"], f"q={marker}") for _ in range(3)]
    log = await wait_for_log(client, mallory, attacker["Name"], "ATTACK-DONE")
    result = json.loads(log.split("ATTACK-DONE ", 1)[1].splitlines()[0])
    assert result["found"] == {}, result  # no address answered the scan
    assert result["captured"] is False, result
    assert result["error"] and "Operation not permitted" in result["error"], result
    assert answers == [(200, "alice-page")] * 3
