"""The herder's own image: it builds offline on this machine and the container,
with the engine's socket mounted, answers /healthz and turns healthy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import INSTANCE_PREFIX

ROOT = Path(__file__).resolve().parent.parent
TAG = "herder/herder:test"

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]


def _venv_bin() -> str:
    """The bin dir of the venv running the tests (it has pip and herder)."""
    return str(Path(sys.executable).parent)


def test_image_builds_and_answers_healthz(tmp_path: Path) -> None:
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
    assert config["Healthcheck"]["Test"][-3:] == ["ping", "--url", "http://127.0.0.1:8080"]

    name = f"herder-image-{INSTANCE_PREFIX}{os.getpid()}"
    run = subprocess.run(
        [
            "docker", "run", "-d", "--name", name,
            # the session sweep removes it should this test die half-way
            "--label", "herder.managed=1", "--label", f"herder.instance={INSTANCE_PREFIX}image",
            "--health-interval", "2s", "--health-start-period", "1s",
            "-v", "/var/run/docker.sock:/var/run/docker.sock",
            "-e", "HERDER_PUBLIC_URL=http://herder.example.org:8080",
            "-p", "127.0.0.1::8080",
            TAG,
        ],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    try:
        port = subprocess.run(
            ["docker", "port", name, "8080/tcp"], capture_output=True, text=True, check=True
        ).stdout.split()[0]
        url = f"http://{port}/healthz"
        deadline = time.monotonic() + 90
        body: dict[str, object] = {}
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    body = json.loads(response.read())
                    break
            except OSError:
                time.sleep(0.5)
        assert body.get("ok") is True, _logs(name)
        assert body["docker"]["ok"] and body["database"]["ok"]  # type: ignore[index]
        status = ""
        while time.monotonic() < deadline:
            status = subprocess.run(
                ["docker", "inspect", "--format", "{{.State.Health.Status}}", name],
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            if status != "starting":
                break
            time.sleep(1)
        assert status == "healthy", _logs(name)
        user = subprocess.run(
            ["docker", "exec", name, "id", "-u"], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert user != "0"
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, check=False)


def _logs(name: str) -> str:
    return subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr[-3000:]
