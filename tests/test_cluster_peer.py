"""The herder-to-herder channel on the lab (scripts/cluster-lab): attach and
exec to a daemon on each node through each replica, the peer routes closed
to clients, and a clear error when a node's replica is gone."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from typing import Any

import aiohttp
import pytest

from herder.peers import PeerAuth

from .cluster_lab import BUSYBOX, Lab, call, token
from .test_cluster import NODES, all_healthy, eventually, kill, spawn

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


async def read_until(ws: aiohttp.ClientWebSocketResponse, expected: str) -> str:
    seen = ""
    while expected not in seen:
        msg = await ws.receive(timeout=15)
        assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), (msg, seen)
        seen += msg.data if isinstance(msg.data, str) else msg.data.decode()
    return seen


def attach_url(replica: str, name: str, query: str = "") -> str:
    return f"{replica.replace('http://', 'ws://')}/daemon/v1/attach/{name}?tail=0{query}"


async def test_attach_and_exec_reach_a_daemon_on_each_node_through_each_replica(lab: Lab) -> None:
    tok = await token(lab, f"peer-{secrets.token_hex(3)}@example.org")
    headers = {"Authorization": f"Bearer {tok}"}
    names = [f"sh{i}" for i in range(3)]
    try:
        for i, name in enumerate(names):  # a shell reading its stdin, on node i
            status, body = await spawn(
                lab, i, tok, name=name, image=BUSYBOX, node=NODES[i], group="shells"
            )
            assert status == 200 and body["Node"]["Hostname"] == NODES[i], body
        async with aiohttp.ClientSession() as session:
            for r, replica in enumerate(lab.replicas):
                for i, name in enumerate(names):
                    status, result = await call(
                        "POST",
                        f"{replica}/daemon/v1/exec/{name}",
                        tok,
                        json={"cmd": ["sh", "-c", f"echo exec {r}{i} $((6 * 7))"]},
                    )
                    assert status == 200, (r, i, result)
                    assert (result["ExitCode"], result["StdOut"]) == (0, f"exec {r}{i} 42\n")
                    async with session.ws_connect(attach_url(replica, name), headers=headers) as ws:
                        await ws.send_str(f"echo typed {r}{i}\n")
                        assert f"typed {r}{i}\n" in await read_until(ws, f"typed {r}{i}\n")
            # A group's exec reaches its daemon on every node.
            status, results = await call(
                "POST",
                f"{lab.replicas[1]}/daemon/v1/exec?group=shells",
                tok,
                json={"cmd": ["sh", "-c", "echo group"]},
            )
            assert status == 200, results
            assert sorted((r["Daemon"], r["ExitCode"], r["StdOut"]) for r in results) == [
                (name, 0, "group\n") for name in names
            ]
            # A browser's single-use ticket (redeemed by the replica it reaches).
            status, ticket = await call(
                "POST", f"{lab.replicas[0]}/daemon/v1/attach-ticket/{names[1]}", tok
            )
            assert status == 200, ticket
            url = f"{lab.replicas[0].replace('http://', 'ws://')}/daemon/v1/attach/{names[1]}"
            async with session.ws_connect(f"{url}?tail=0&ticket={ticket['ticket']}") as ws:
                await ws.send_str("echo by ticket\n")
                assert "by ticket\n" in await read_until(ws, "by ticket\n")
            # Binary frames both ways, through a replica on another node.
            url = attach_url(lab.replicas[0], names[2], "&binary=1")
            async with session.ws_connect(url, headers=headers) as ws:
                await ws.send_bytes(b"printf 'bin\\001\\n'\n")
                msg = await ws.receive(timeout=15)
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, b"bin\x01\n")
            # The daemon stops while attached through another node's replica:
            # the close code of the daemon's replica comes through.
            async with session.ws_connect(
                attach_url(lab.replicas[2], names[1]), headers=headers
            ) as ws:
                await ws.send_str("echo ready\n")
                await read_until(ws, "ready\n")
                await kill(lab, tok, names[1], via=lab.replicas[0])
                msg = await ws.receive(timeout=30)
                assert msg.type == aiohttp.WSMsgType.CLOSE, msg
                assert (ws.close_code, msg.extra) == (1001, "daemon stopped")
        # Another subject reaches none of them through any replica.
        other = await token(lab, f"other-{secrets.token_hex(3)}@example.org")
        status, result = await call(
            "POST", f"{lab.replicas[1]}/daemon/v1/exec/{names[0]}", other, json={"cmd": ["true"]}
        )
        assert status == 404, result
    finally:
        for name in names:
            await call("POST", f"{lab.replicas[0]}/daemon/v1/kill/{name}", tok)
    assert lab.services() == []


async def test_the_peer_channel_refuses_clients_and_does_nothing(lab: Lab) -> None:
    email = f"peer-refuse-{secrets.token_hex(3)}@example.org"
    tok = await token(lab, email)
    status, body = await spawn(lab, 0, tok, name="target", image=BUSYBOX, node=NODES[0])
    assert status == 200, body
    try:
        payload = json.dumps({"name": body["Name"], "cmd": ["sh", "-c", "echo > /tmp/pwned"]})
        wrong = PeerAuth(secrets.token_urlsafe(32), "intruder")
        signed = wrong.sign("POST", "/peer/v1/exec", to="", subject=email, body=payload.encode())
        async with aiohttp.ClientSession() as session:
            for proof in ({}, signed):
                headers = {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}
                async with session.post(
                    f"{lab.replicas[0]}/peer/v1/exec", data=payload, headers={**headers, **proof}
                ) as response:
                    answer = await response.json()
                    assert response.status == 401 and "cluster secret" in answer["error"], answer
        status, result = await call(
            "POST",
            f"{lab.replicas[1]}/daemon/v1/exec/target",
            tok,
            json={"cmd": ["sh", "-c", "test -e /tmp/pwned"]},
        )
        assert (status, result["ExitCode"]) == (200, 1), result  # nothing ran
    finally:
        await kill(lab, tok, "target")


async def test_a_node_whose_replica_is_gone_gives_a_clear_503(lab: Lab) -> None:
    tok = await token(lab, f"peer-gone-{secrets.token_hex(3)}@example.org")
    status, body = await spawn(lab, 0, tok, name="far", image=BUSYBOX, node=NODES[2])
    assert status == 200, body
    node3 = lab.manager.replace("/n1/", "/n3/")
    try:
        replica = (
            await asyncio.to_thread(
                subprocess.run,
                [
                    "docker",
                    "-H",
                    node3,
                    "ps",
                    "-q",
                    "--filter",
                    "label=com.docker.swarm.service.name=hlab-herder",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
        ).stdout.strip()
        assert replica
        await asyncio.to_thread(
            subprocess.run, ["docker", "-H", node3, "kill", "--signal", "KILL", replica], check=True
        )
        status, answer = await call(
            "POST", f"{lab.replicas[0]}/daemon/v1/exec/far", tok, json={"cmd": ["true"]}
        )
        assert status == 503 and NODES[2] in answer["error"], answer
        headers = {"Authorization": f"Bearer {tok}"}
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(attach_url(lab.replicas[1], "far"), headers=headers)
            assert refused.value.status == 503
        await eventually(lambda: all_healthy(lab), 60, "the Swarm restarts the killed replica")

        async def reached() -> Any:
            status, result = await call(
                "POST", f"{lab.replicas[0]}/daemon/v1/exec/far", tok, json={"cmd": ["echo", "back"]}
            )
            return status == 200 and result.get("StdOut") == "back\n"

        await eventually(reached, 20, "exec reaches the node's new replica")
    finally:
        await kill(lab, tok, "far")


async def test_the_relay_works_across_replicas(lab: Lab) -> None:
    """The golem's control socket on one replica, its minion on another and
    its data channel on the third; frames both ways, text and binary."""
    webstrate = f"lab-{secrets.token_hex(3)}"
    status, golem = await call("POST", f"{lab.replicas[0]}/golem/v1/spawn/{webstrate}")
    assert status in (200, 201), golem
    try:
        env = json.loads(
            await asyncio.to_thread(
                lab.docker,
                "service",
                "inspect",
                "--format",
                "{{json .Spec.TaskTemplate.ContainerSpec.Env}}",
                golem["Name"],
            )
        )
        page = next(e.split("=", 1)[1] for e in env if e.startswith("GOLEM_URL="))
        key = page.split("#herder-golem-key=", 1)[1]  # what the golem's page would read
        ws = [url.replace("http://", "ws://") for url in lab.replicas]
        async with aiohttp.ClientSession() as session:
            control = await session.ws_connect(f"{ws[0]}/golem/v1/connect/{webstrate}?key={key}")
            minion = await session.ws_connect(f"{ws[1]}/minion/v1/connect/{webstrate}?type=lab")
            announced = json.loads((await control.receive(timeout=15)).data)
            assert (announced["Event"], announced["Type"]) == ("minion-connected", "lab")
            for replica in lab.replicas:  # every replica says it is connected
                status, listed = await call("GET", f"{replica}/golem/v1/ls")
                assert [(g["Webstrate"], g["Connected"]) for g in listed] == [(webstrate, True)]
            path = f"/golem/v1/connect-to/{webstrate}/{announced['ID']}"
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"{ws[2]}{path}?key=wrong")
            assert refused.value.status == 401
            channel = await session.ws_connect(f"{ws[2]}{path}?key={key}")
            assert json.loads((await minion.receive(timeout=15)).data) == {
                "Event": "golem-connected"
            }
            await minion.send_str("to the golem")
            assert (await channel.receive(timeout=15)).data == "to the golem"
            await channel.send_bytes(b"\x00to the minion")
            msg = await minion.receive(timeout=15)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, b"\x00to the minion")
            await control.close()
            assert json.loads((await minion.receive(timeout=15)).data) == {
                "Event": "golem-disconnected"
            }
            await channel.close()
            await minion.close()
    finally:
        status, body = await call("POST", f"{lab.replicas[1]}/golem/v1/kill/{webstrate}")
        assert status == 200, body
    assert lab.services() == []
