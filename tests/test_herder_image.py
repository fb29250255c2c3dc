"""The herder's own image: it builds offline on this machine, and run as the
README says (host network, the engine's socket mounted) it turns healthy and
proxies to a daemon it spawned."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .conftest import INSTANCE_PREFIX
from .images import ensure_httpd_image

ROOT = Path(__file__).resolve().parent.parent
TAG = "herder/herder:test"

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]


def _venv_bin() -> str:
    """The bin dir of the venv running the tests (it has pip and herder)."""
    return str(Path(sys.executable).parent)


def test_image_builds_serves_and_proxies_a_daemon_on_the_host_network(tmp_path: Path) -> None:
    build = subprocess.run(
        [str(ROOT / "scripts/build-herder-image"), TAG],
        capture_output=True,
        text=True,
        env={**os.environ, "PY": _venv_bin()},
        timeout=800,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    config = json.loads(
        subprocess.run(
            ["docker", "image", "inspect", TAG], capture_output=True, text=True, check=True
        ).stdout
    )[0]["Config"]
    assert config["User"] == "herder"
    assert "HERDER_PORT" in config["Healthcheck"]["Test"][-1]

    # As the README runs it: on the host's network, the engine's socket mounted.
    port = _free_port()
    name = f"herder-image-{INSTANCE_PREFIX}{os.getpid()}"
    run = subprocess.run(
        [
            "docker", "run", "-d", "--name", name, "--network", "host",
            # the session sweep removes it should this test die half-way
            "--label", "herder.managed=1", "--label", f"herder.instance={INSTANCE_PREFIX}image",
            "--health-interval", "2s", "--health-start-period", "1s",
            "-v", "/var/run/docker.sock:/var/run/docker.sock",
            "-e", f"HERDER_PORT={port}", "-e", "HERDER_HOST=127.0.0.1",
            "-e", "HERDER_DAEMON_BIND_ADDRESS=127.0.0.1",
            "-e", f"HERDER_PUBLIC_URL=http://127.0.0.1:{port}",
            TAG,
        ],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    url = f"http://127.0.0.1:{port}"
    instance = ""
    try:
        deadline = time.monotonic() + 90
        body: dict[str, object] = {}
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
                    body = json.loads(response.read())
                    break
            except OSError:
                time.sleep(0.5)
        assert body.get("ok") is True, _logs(name)
        assert body["docker"]["ok"] and body["database"]["ok"]  # type: ignore[index]
        status = ""
        while time.monotonic() < deadline:
            status = _docker("inspect", "--format", "{{.State.Health.Status}}", name)
            if status != "starting":
                break
            time.sleep(1)
        assert status == "healthy", _logs(name)
        assert _docker("exec", name, "id", "-u") != "0"
        instance = _docker("exec", name, "cat", "/var/lib/herder/instance-id")

        # A daemon spawned by the containerized herder answers through its proxy.
        token = _docker("exec", name, "herder", "token", "create", "-e", "image@example.org")
        token = token.splitlines()[-1]
        image = asyncio.run(ensure_httpd_image())
        spawned = _call(
            url + "/daemon/v1/spawn",
            token,
            {"name": "web", "image": image, "ports": "[80]", "index.html": "from the image"},
        )
        page = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"{url}/daemon/v1/proxy/{spawned['Name']}/index.html", timeout=5
                ) as response:
                    page = response.read().decode()
                    break
            except OSError:
                time.sleep(0.3)
        assert page == "from the image", _logs(name)
        assert _call(url + "/daemon/v1/kill/web?wipe=true", token)["Killed"] == [spawned["Name"]]
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, check=False)
        if instance:
            for leftover in _docker(
                "ps", "-aq", "--filter", f"label=herder.instance={instance}"
            ).split():
                subprocess.run(["docker", "rm", "-f", "-v", leftover], capture_output=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def _call(url: str, token: str, form: dict[str, str] | None = None) -> Any:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _logs(name: str) -> str:
    return subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr[-3000:]
