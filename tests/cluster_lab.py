"""The cluster lab (scripts/cluster-lab) as a session fixture for the `cluster` tests.

A lab already up is used as it is (and left up); otherwise the fixture
brings one up and takes it down at the end of the session, whatever the
tests did. Tests reach the replicas over real HTTP from the host.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "cluster-lab"
BUSYBOX = "hlab/busybox:1"  # loaded into every node by the lab


@dataclass(frozen=True)
class Lab:
    replicas: tuple[str, ...]
    manager: str
    password: str

    def docker(self, *args: str) -> str:
        """The docker CLI against the lab's manager (never the host's engine)."""
        done = subprocess.run(
            ["docker", "-H", self.manager, *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    def services(self) -> list[str]:
        """The lab's herder-made services (all but the replicas' own)."""
        out = self.docker(
            "service", "ls", "--filter", "label=herder.managed=1", "--format", "{{.Name}}"
        )
        return sorted(filter(None, out.split()))


def _parse(output: str) -> Lab:
    values = dict(
        line.split("=", 1) for line in output.splitlines() if line.startswith("HERDER_LAB_")
    )
    return Lab(
        replicas=tuple(values["HERDER_LAB_REPLICAS"].split(",")),
        manager=values["HERDER_LAB_MANAGER"],
        password=values["HERDER_LAB_TOKEN_PASSWORD"],
    )


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    status = subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True)
    made = False
    if status.returncode == 0 and len(_parse(status.stdout).replicas) == 3:
        output = status.stdout
    else:
        made = True
        up = subprocess.run([str(SCRIPT), "up", "3"], capture_output=True, text=True)
        if up.returncode != 0:
            subprocess.run([str(SCRIPT), "down"], capture_output=True)
            pytest.fail(f"scripts/cluster-lab up failed:\n{up.stderr[-3000:]}")
        output = up.stdout
    found = _parse(output)
    # Left over by an interrupted run against a lab that stayed up.
    for name in found.services():
        found.docker("service", "rm", name)
    try:
        yield found
    finally:
        if made:
            subprocess.run([str(SCRIPT), "down"], capture_output=True)


async def token(lab: Lab, email: str, credits: int = 100000) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{lab.replicas[0]}/token/v1/generate",
            data={"password": lab.password, "email": email, "credits": str(credits)},
        ) as response:
            assert response.status == 200, await response.text()
            body: dict[str, Any] = await response.json()
    return str(body["token"])


async def call(method: str, url: str, token: str | None = None, **kwargs: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
        async with session.request(method, url, headers=headers, **kwargs) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except json.JSONDecodeError:
                return response.status, text
