"""The herder on a Docker Swarm: three replicas of scripts/cluster-lab, one
per node, on one PostgreSQL, with `HERDER_RUNTIME=swarm`. Everything goes
over real HTTP from the host to the replicas, as a client would."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from .cluster_lab import Lab, call, token

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

HTTPD = "hlab/httpd:1"
NODES = ("hlab-node1", "hlab-node2", "hlab-node3")


async def spawn(lab: Lab, replica: int, tok: str, **fields: str) -> tuple[int, Any]:
    return await call("POST", f"{lab.replicas[replica]}/daemon/v1/spawn", tok, data=fields)


async def kill(lab: Lab, tok: str, name: str, via: str | None = None) -> None:
    status, body = await call("POST", f"{via or lab.replicas[1]}/daemon/v1/kill/{name}", tok)
    assert status == 200, body


async def test_every_replica_lists_the_three_nodes(lab: Lab) -> None:
    for url in lab.replicas:
        status, nodes = await call("GET", f"{url}/node/v1/nodes")
        assert status == 200, nodes
        assert [n["Hostname"] for n in nodes] == list(NODES)
        assert {n["State"] for n in nodes} == {"ready"}
        assert {n["Availability"] for n in nodes} == {"active"}
        assert sum(n["Leader"] for n in nodes) == 1
        assert all(n["CPUs"] > 0 and n["MemoryBytes"] > 0 and n["GPUs"] == 0 for n in nodes)
        assert [n["Address"] for n in nodes] == [
            u.split("//")[1].split(":")[0] for u in lab.replicas
        ]
    status, one = await call("GET", f"{lab.replicas[0]}/node/v1/specs?node=hlab-node2")
    assert status == 200 and one["Hostname"] == "hlab-node2"
    status, body = await call("GET", f"{lab.replicas[0]}/node/v1/specs?node=nowhere")
    assert status == 400 and "nowhere" in body["error"]
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "herder", "node", "ls", "--url", lab.replicas[2]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines()[1:]] == list(NODES)


async def test_daemons_on_chosen_nodes_work_through_every_replica(lab: Lab) -> None:
    tok = await token(lab, f"spread-{secrets.token_hex(3)}@example.org")
    names = [f"web{i}" for i in range(3)]
    spawned: list[dict[str, Any]] = []
    try:
        # Daemon i on node i, each spawned through another replica.
        for i, name in enumerate(names):
            status, body = await spawn(
                lab,
                (i + 1) % 3,
                tok,
                name=name,
                image=HTTPD,
                ports="[80]",
                node=NODES[i],
                **{"index.html": f"hello from {name}\n"},
            )
            assert status == 200, body
            assert body["Node"]["Hostname"] == NODES[i]
            assert body["Node"]["Address"] == lab.replicas[i].split("//")[1].split(":")[0]
            assert body["Ports"]["80"] > 0 and body["Address"]
            spawned.append(body)
        # The host-mode port answers on the daemon's node.
        for body, name in zip(spawned, names, strict=True):
            url = f"http://{body['Node']['Address']}:{body['Ports']['80']}/index.html"
            status, text = await call("GET", url)
            assert (status, text) == (200, f"hello from {name}\n")
        for r, url in enumerate(lab.replicas):
            status, listed = await call("GET", f"{url}/daemon/v1/ls", tok)
            assert status == 200, listed
            assert {d["Labels"]["herder.name"]: d["Node"]["Hostname"] for d in listed} == dict(
                zip(names, NODES, strict=True)
            )
            assert {d["State"] for d in listed} == {"running"}
            for body, name in zip(spawned, names, strict=True):
                # The proxy dials the task's overlay address from any replica.
                status, text = await call("GET", f"{url}/daemon/v1/proxy/{body['Name']}/index.html")
                assert (status, text) == (200, f"hello from {name}\n"), (r, name)
                # Logs come through the Swarm from whichever node runs it.
                status, text = await call("GET", f"{url}/daemon/v1/logs/{name}?tail=50", tok)
                # (busybox httpd -v logs each response it gave)
                assert status == 200 and "response:200" in text, (r, name, text)
        # Exec through the replica of the daemon's node and, carried over the
        # peer channel, through another (more in test_cluster_peer.py).
        for i, name in enumerate(names):
            for via in (i, (i + 1) % 3):
                status, result = await call(
                    "POST",
                    f"{lab.replicas[via]}/daemon/v1/exec/{name}",
                    tok,
                    json={"cmd": ["cat", "/minion/index.html"]},
                )
                assert status == 200 and result["StdOut"] == f"hello from {name}\n", result
    finally:
        for name in names:
            await kill(lab, tok, name)
    assert lab.services() == []


async def test_a_respawn_stays_on_its_node_and_a_kill_leaves_nothing(lab: Lab) -> None:
    tok = await token(lab, f"respawn-{secrets.token_hex(3)}@example.org")
    status, first = await spawn(lab, 0, tok, name="keep", image=HTTPD, ports="[80]", node=NODES[2])
    assert status == 200, first
    try:
        status, second = await spawn(lab, 1, tok, name="keep", image=HTTPD, ports="[80]")
        assert status == 200, second
        assert second["Node"] == first["Node"]  # its data volume is there
        status, listed = await call("GET", f"{lab.replicas[0]}/daemon/v1/ls", tok)
        assert [d["Node"]["Hostname"] for d in listed] == [NODES[2]]
    finally:
        await kill(lab, tok, "keep")
    assert lab.services() == []
    status, listed = await call("GET", f"{lab.replicas[2]}/daemon/v1/ls", tok)
    assert (status, listed) == (200, [])


async def test_bad_placement_is_refused_and_changes_nothing(lab: Lab) -> None:
    tok = await token(lab, f"bad-{secrets.token_hex(3)}@example.org")
    status, body = await spawn(lab, 0, tok, name="x", image=HTTPD, node="hlab-node9")
    assert status == 400 and "hlab-node9" in body["error"]
    status, body = await spawn(lab, 1, tok, name="x", image=HTTPD, gpus="1")
    assert status == 400 and "GPU" in body["error"]
    status, body = await spawn(lab, 2, tok, name="x", image=HTTPD, gpus="many")
    assert status == 400 and "gpus" in body["error"]
    assert lab.services() == []


async def test_a_minion_runs_through_every_replica_on_its_node(lab: Lab) -> None:
    tok = await token(lab, f"minion-{secrets.token_hex(3)}@example.org")

    async def run(i: int) -> None:
        status, body = await call(
            "POST",
            f"{lab.replicas[i]}/minion/v1/spawn",
            tok,
            data={"env": "python", "main.sh": "echo $((6 * 7)) on $(hostname)"},
        )
        assert status == 200, body
        assert body["ExitCode"] == 0 and body["StdOut"].startswith("42 on "), body

    await asyncio.gather(*(run(i) for i in range(3)))
    # Their containers are gone from every node (removed once each run ends).
    for i in range(3):
        node = lab.manager.replace("/n1/", f"/n{i + 1}/")

        async def gone(node: str = node) -> bool:
            out = await asyncio.to_thread(
                subprocess.run,
                ["docker", "-H", node, "ps", "-aq", "--filter", "label=herder.kind=minion"],
                capture_output=True,
                text=True,
                check=True,
            )
            return out.stdout.strip() == ""

        await eventually(gone, 20, f"no minion container left on node {i + 1}")


async def test_a_second_subject_sees_none_of_the_firsts_workloads(lab: Lab) -> None:
    first = await token(lab, f"first-{secrets.token_hex(3)}@example.org")
    second = await token(lab, f"second-{secrets.token_hex(3)}@example.org")
    status, body = await spawn(lab, 0, first, name="mine", image=HTTPD, ports="[80]", node=NODES[1])
    assert status == 200, body
    try:
        for url in lab.replicas:
            status, nodes = await call("GET", f"{url}/node/v1/nodes", first)
            assert {n["Hostname"]: [w["Name"] for w in n["Workloads"]] for n in nodes} == {
                NODES[0]: [],
                NODES[1]: [body["Name"]],
                NODES[2]: [],
            }
            status, nodes = await call("GET", f"{url}/node/v1/nodes", second)
            assert all(n["Workloads"] == [] for n in nodes)
            status, listed = await call("GET", f"{url}/daemon/v1/ls", second)
            assert (status, listed) == (200, [])
            status, answer = await call("GET", f"{url}/daemon/v1/logs/mine", second)
            assert status == 404, answer
            status, answer = await call("POST", f"{url}/daemon/v1/kill/mine", second)
            assert status == 404, answer
        status, listed = await call("GET", f"{lab.replicas[2]}/daemon/v1/ls", first)
        assert [d["Labels"]["herder.name"] for d in listed] == ["mine"]
    finally:
        await kill(lab, first, "mine")


async def test_metering_charges_each_second_once_across_replicas(lab: Lab) -> None:
    """Three replicas tick the same ledger: a daemon is charged once per second."""
    email = f"meter-{secrets.token_hex(3)}@example.org"
    tok = await token(lab, email, credits=10000)
    status, body = await spawn(lab, 0, tok, name="tick", image=HTTPD, ports="[80]")
    assert status == 200, body
    try:
        await asyncio.sleep(6)
    finally:
        await kill(lab, tok, "tick")
    await asyncio.sleep(2)  # a tick after the kill changes nothing
    rows, charged = await _ledger_rows(email)
    assert len(rows) == 1 and rows[0]["state"] == "stopped", rows
    ran = rows[0]["stopped_at"] - rows[0]["started_at"]
    # Charged its running seconds (±1), not three times them.
    assert ran >= 5 and abs(rows[0]["seconds"] - ran) <= 1, rows
    status, balance = await call("GET", f"{lab.replicas[2]}/token/v1/balance", tok)
    assert status == 200, balance
    assert balance["granted"] - balance["credits"] == charged == rows[0]["seconds"]


async def _ledger_rows(email: str) -> tuple[list[Any], int]:
    """The lab's workload runs of one subject with their charged seconds, and
    the account's charged total (the lab's own database on the host)."""
    import asyncpg

    conn = await asyncpg.connect("postgresql://herder:herder@127.0.0.1:5432/hlab_herder")
    try:
        rows = await conn.fetch(
            "select w.state, w.started_at, w.stopped_at, c.seconds, w.container_name"
            " from workloads w join charges c on c.id = w.charge_id"
            " where w.subject = $1 order by w.id",
            email,
        )
        charged = await conn.fetchval("select charged from accounts where subject = $1", email)
    finally:
        await conn.close()
    return list(rows), int(charged or 0)


async def _less(read: Any, than: int) -> bool:
    return bool(await read() < than)


async def all_healthy(lab: Lab) -> bool:
    for url in lab.replicas:
        try:
            status, _ = await call("GET", f"{url}/healthz")
        except aiohttp.ClientError:
            return False
        if status != 200:
            return False
    return True


async def eventually(check: Any, seconds: float, what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {seconds:g} s: {what}")
        await asyncio.sleep(0.5)


async def test_a_drained_node_s_daemon_moves_and_its_ledger_stays_continuous(lab: Lab) -> None:
    email = f"drain-{secrets.token_hex(3)}@example.org"
    tok = await token(lab, email)
    # Not placed by hand: the Swarm may move it (one given `node=` stays put).
    status, body = await spawn(
        lab, 0, tok, name="mover", image=HTTPD, ports="[80]", **{"index.html": "moved\n"}
    )
    assert status == 200, body
    drained = body["Node"]["Hostname"]
    # Draining a node takes its replica away too: ask the other two.
    others = [url for url, node in zip(lab.replicas, NODES, strict=True) if node != drained]
    try:
        await asyncio.sleep(2)
        await asyncio.to_thread(lab.docker, "node", "update", "--availability", "drain", drained)

        async def moved() -> Any:
            status, listed = await call("GET", f"{others[0]}/daemon/v1/ls", tok)
            return (
                status == 200
                and len(listed) == 1
                and listed[0]["State"] == "running"
                and listed[0]["Node"]["Hostname"] != drained
                and listed[0]
            )

        await eventually(moved, 60, "the daemon runs on another node")

        async def proxied() -> bool:
            status, text = await call(
                "GET", f"{others[1]}/daemon/v1/proxy/{body['Name']}/index.html"
            )
            return (status, text) == (200, "moved\n")

        await eventually(proxied, 30, "the proxy reaches the moved daemon")
        await asyncio.sleep(2)
    finally:
        await asyncio.to_thread(lab.docker, "node", "update", "--availability", "active", drained)
        await kill(lab, tok, "mover", via=others[0])
    rows, charged = await _ledger_rows(email)
    assert len(rows) >= 2 and {r["state"] for r in rows} == {"stopped"}, rows
    for earlier, later in zip(rows, rows[1:], strict=False):
        assert earlier["stopped_at"] <= later["started_at"] + 1, rows  # never two runs at once
    for row in rows:
        assert abs(row["seconds"] - (row["stopped_at"] - row["started_at"])) <= 1, rows
    assert charged == sum(r["seconds"] for r in rows)
    status, balance = await call("GET", f"{others[1]}/token/v1/balance", tok)
    assert balance["granted"] - balance["credits"] == charged
    await eventually(lambda: all_healthy(lab), 60, "the drained node's replica is back")


async def test_a_replica_killed_mid_traffic_leaves_the_others_serving(lab: Lab) -> None:
    email = f"sigkill-{secrets.token_hex(3)}@example.org"
    tok = await token(lab, email)
    status, body = await spawn(
        lab,
        0,
        tok,
        name="steady",
        image=HTTPD,
        ports="[80]",
        node=NODES[0],
        **{"index.html": "up\n"},
    )
    assert status == 200, body
    statuses: list[int] = []
    stop = asyncio.Event()

    async def traffic(url: str) -> None:
        while not stop.is_set():
            for path in (f"/daemon/v1/proxy/{body['Name']}/", "/daemon/v1/ls", "/healthz"):
                status, _ = await call("GET", f"{url}{path}", tok)
                statuses.append(status)

    async def minion(url: str) -> int:
        status, _ = await call(
            "POST", f"{url}/minion/v1/spawn", tok, data={"env": "python", "main.sh": "sleep 5"}
        )
        return status

    node2 = lab.manager.replace("/n1/", "/n2/")
    replica = (
        await asyncio.to_thread(
            subprocess.run,
            [
                "docker",
                "-H",
                node2,
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
    workers = [asyncio.create_task(traffic(lab.replicas[i])) for i in (0, 2)]
    in_flight = asyncio.create_task(minion(lab.replicas[1]))
    try:
        await asyncio.sleep(2)
        await asyncio.to_thread(
            subprocess.run, ["docker", "-H", node2, "kill", "--signal", "KILL", replica], check=True
        )
        await asyncio.sleep(4)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    with pytest.raises(Exception):  # noqa: B017  (the killed replica's client sees its connection die)
        await in_flight
    assert statuses and set(statuses) <= {200}, sorted(set(statuses))

    async def back() -> bool:
        try:
            status, _ = await call("GET", f"{lab.replicas[1]}/healthz")
        except Exception:
            return False
        return status == 200

    await eventually(back, 60, "the Swarm restarts the killed replica")

    async def swept() -> bool:
        out = await asyncio.to_thread(
            subprocess.run,
            ["docker", "-H", node2, "ps", "-aq", "--filter", "label=herder.kind=minion"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip() == ""

    await eventually(swept, 30, "the killed replica's minion is removed")
    status, listed = await call("GET", f"{lab.replicas[1]}/daemon/v1/ls", tok)
    assert [d["State"] for d in listed] == ["running"]

    async def credits() -> int:
        status, balance = await call("GET", f"{lab.replicas[0]}/token/v1/balance", tok)
        assert status == 200, balance
        return int(balance["credits"])

    # Still metered, whichever replica holds the metering lease now.
    before = await credits()
    await eventually(lambda: _less(credits, before), 15, "the daemon is still charged")
    await kill(lab, tok, "steady")
    rows, charged = await _ledger_rows(email)
    status, balance = await call("GET", f"{lab.replicas[1]}/token/v1/balance", tok)
    assert balance["granted"] - balance["credits"] == charged == sum(r["seconds"] for r in rows)
    # Nothing leaked: no service, no minion on any node.
    assert lab.services() == []
    for i in range(3):
        node = lab.manager.replace("/n1/", f"/n{i + 1}/")
        out = await asyncio.to_thread(
            subprocess.run,
            ["docker", "-H", node, "ps", "-aq", "--filter", "label=herder.kind=minion",
             "--filter", "label=herder.subject=" + email],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert out.stdout.strip() == "", i
