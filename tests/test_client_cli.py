"""The client commands of `herder` against a served herder (a real `herder serve`)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from herder.signing import INSTANCE_FILE, load_keypair
from herder.tokens import TokenService

from .conftest import make_settings
from .images import BUSYBOX_IMAGE
from .script_image import SCRIPT_IMAGE, ensure_script_image

ROOT = Path(__file__).resolve().parent.parent
HERDER = [sys.executable, "-m", "herder"]

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@dataclass
class Served:
    url: str
    data_dir: Path
    log: Path
    instance: str

    def token(self, email: str | None = None, credits: int = 1000) -> str:
        settings = make_settings(self.data_dir)
        service = TokenService(load_keypair(self.data_dir), settings, ledger=None)  # type: ignore[arg-type]
        token, _ = service.create(email or f"cli-{secrets.token_hex(3)}@example.org", credits, 1)
        return token

    def herder(
        self, *args: str, token: str | None = None, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERDER_")}
        env["HERDER_URL"] = self.url
        if token:
            env["HERDER_TOKEN"] = token
        return subprocess.run(
            [*HERDER, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            cwd=ROOT,
            input=input,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    asyncio.run(ensure_script_image())
    data_dir = tmp_path_factory.mktemp("served")
    make_settings(data_dir)  # the session's instance id, so the sweep knows its containers
    port = _free_port()
    log = data_dir / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERDER_")}
    env.update(
        {
            "HERDER_DATA_DIR": str(data_dir),
            "HERDER_HOST": "127.0.0.1",
            "HERDER_PORT": str(port),
            "HERDER_LOG_FORMAT": "json",
            "HERDER_MINION_TIMEOUT": "20",
            "HERDER_GOLEM_IMAGE": BUSYBOX_IMAGE,
            "HERDER_WEBSTRATES_URL": "http://127.0.0.1:9",
        }
    )
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [*HERDER, "serve"], env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"herder serve did not start:\n{log.read_text()}")
            time.sleep(0.2)
    instance = (data_dir / INSTANCE_FILE).read_text().strip()
    try:
        yield Served(url, data_dir, log, instance)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("herder: ") and "Traceback" not in result.stderr
    return lines[0]


def test_ping_and_credits(served: Served) -> None:
    result = served.herder("ping")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: herder ") and "docker" in result.stdout
    token = served.token("pinger@example.org", credits=77)
    result = served.herder("ping", token=token)
    assert "pinger@example.org has 77 credits" in result.stdout


def test_server_errors_are_one_line_and_exit_1(served: Served) -> None:
    line = _one_error_line(served.herder("daemon", "logs", "nosuch", token=served.token()))
    assert "nosuch" in line and "404" in line
    line = _one_error_line(served.herder("daemon", "logs", "x", token="not.a.token"))
    assert "401" in line
    line = _one_error_line(served.herder("daemon", "ls"))
    assert "token" in line
    line = _one_error_line(served.herder("ping", "--url", "http://127.0.0.1:1"))
    assert "cannot reach" in line


def test_request_lines_are_json_with_request_id(served: Served) -> None:
    request = urllib.request.Request(
        served.url + "/healthz", headers={"X-Request-Id": "cli-test-1"}
    )
    with urllib.request.urlopen(request) as response:
        assert response.headers["X-Request-Id"] == "cli-test-1"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        entries = [
            json.loads(line) for line in served.log.read_text().splitlines() if line.startswith("{")
        ]
        mine = [e for e in entries if e.get("request_id") == "cli-test-1"]
        if mine:
            break
        time.sleep(0.1)
    assert mine, served.log.read_text()[-2000:]
    assert mine[0]["path"] == "/healthz" and mine[0]["status"] == 200 and mine[0]["method"] == "GET"


def test_daemon_spawn_ls_logs_exec_kill(served: Served, tmp_path: Path) -> None:
    token = served.token()
    script = tmp_path / "run.sh"
    script.write_text("echo one; echo two; exec httpd -f -p 80 -h /minion\n")
    (tmp_path / "index.html").write_text("<h1>hi</h1>")
    result = served.herder(
        "daemon", "spawn", "chatty", SCRIPT_IMAGE, "-p", "80",
        "-f", f"run.sh=@{script}", "-f", f"@{tmp_path / 'index.html'}", "--group", "g1",
        token=token,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("chatty-") and "port 80 -> host port" in result.stdout
    host_port = int(result.stdout.split("host port")[1].split()[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/index.html", timeout=10) as page:
        assert page.read() == b"<h1>hi</h1>"
    assert served.herder(
        "daemon", "spawn", "quiet", SCRIPT_IMAGE, "-f", "run.sh=sleep 600", token=token
    ).returncode == 0  # fmt: skip

    table = served.herder("daemon", "ls", token=token).stdout.splitlines()
    assert table[0].split() == ["NAME", "STATE", "STATUS", "IMAGE", "PORTS", "GROUP", "ID"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert set(rows) == {"chatty", "quiet"}
    assert "running" in rows["chatty"] and "g1" in rows["chatty"] and "80->" in rows["chatty"]
    listed = json.loads(served.herder("daemon", "ls", "--json", token=token).stdout)
    assert sorted(d["Labels"]["herder.name"] for d in listed) == ["chatty", "quiet"]
    in_group = json.loads(
        served.herder("daemon", "ls", "--group", "g1", "--json", token=token).stdout
    )
    assert [d["Labels"]["herder.name"] for d in in_group] == ["chatty"]

    for _ in range(50):
        result = served.herder("daemon", "logs", "chatty", token=token)
        if "two" in result.stdout:
            break
        time.sleep(0.1)
    assert result.returncode == 0 and result.stdout == "one\ntwo\n"
    assert served.herder("daemon", "logs", "chatty", "--tail", "1", token=token).stdout == "two\n"

    result = served.herder(
        "daemon", "exec", "chatty", "--", "sh", "-c", "echo out; echo err >&2; exit 4",
        token=token,
    )  # fmt: skip
    assert result.returncode == 4
    assert result.stdout == "out\n" and result.stderr == "err\n"
    result = served.herder("daemon", "exec", "chatty", "--json", "--", "true", token=token)
    assert json.loads(result.stdout)["ExitCode"] == 0
    result = served.herder(
        "daemon", "exec", "--group", "g1", "--", "cat", "/minion/index.html", token=token
    )
    assert result.returncode == 0 and result.stdout == "== chatty (exit 0)\n<h1>hi</h1>"

    result = served.herder("daemon", "kill", "--group", "g1", token=token)
    assert result.returncode == 0 and "killed 1 daemon" in result.stdout
    result = served.herder("daemon", "kill", "quiet", "--wipe", token=token)
    assert result.returncode == 0 and "killed quiet" in result.stdout
    assert served.herder("daemon", "ls", "--json", token=token).stdout.strip() == "[]"
    line = _one_error_line(served.herder("daemon", "kill", "quiet", token=token))
    assert "404" in line
    line = _one_error_line(served.herder("daemon", "spawn", "x", "no/such-image:1", token=token))
    assert "404" in line and "no/such-image" in line


def test_golem_spawn_ls_kill(served: Served) -> None:
    webstrate = f"cli-{secrets.token_hex(3)}"
    result = served.herder("golem", "spawn", webstrate)
    assert result.returncode == 0, result.stderr
    assert f"golem of {webstrate} running" in result.stdout
    result = served.herder("golem", "ls")
    assert result.stdout.splitlines()[0].split()[:2] == ["WEBSTRATE", "STATE"]
    assert any(line.split()[0] == webstrate for line in result.stdout.splitlines()[1:])
    listed = json.loads(served.herder("golem", "ls", "--json").stdout)
    assert webstrate in [g["Webstrate"] for g in listed]
    result = served.herder("golem", "kill", webstrate)
    assert result.returncode == 0 and "killed" in result.stdout
    line = _one_error_line(served.herder("golem", "kill", webstrate))
    assert "404" in line
    line = _one_error_line(served.herder("golem", "spawn", "bad id!"))
    assert "400" in line


def test_minion_run(served: Served, tmp_path: Path) -> None:
    token = served.token()
    script = tmp_path / "main.sh"
    script.write_text(
        "echo to stdout; echo to stderr >&2; python3 -c 'print(6*7)' > answer.txt; exit 5\n"
    )
    result = served.herder("minion", "run", "python", "-f", f"main.sh=@{script}", token=token)
    assert result.returncode == 5, result.stderr
    assert result.stdout == "to stdout\n" and result.stderr == "to stderr\n"
    result = served.herder(
        "minion", "run", "python", "-f", f"main.sh=@{script}", "--output", "answer.txt",
        token=token,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout == "42\n"
    saved = tmp_path / "saved.txt"
    result = served.herder(
        "minion", "run", "python", "-f", f"main.sh=@{script}", "--output", "answer.txt",
        "-O", str(saved), token=token,
    )  # fmt: skip
    assert result.returncode == 0 and saved.read_text() == "42\n"
    line = _one_error_line(
        served.herder("minion", "run", "cobol", "-f", f"main.sh=@{script}", token=token)
    )
    assert "400" in line and "python" in line  # lists the known environments
    line = _one_error_line(served.herder("minion", "run", "python", "-f", "main.sh=@/nonexistent"))
    assert "/nonexistent" in line


def test_attach_to_a_served_daemon_through_a_pty(served: Served) -> None:
    import pty
    import select
    import termios

    token = served.token()
    result = served.herder(
        "daemon", "spawn", "echoer", SCRIPT_IMAGE,
        "-f", 'run.sh=while read line; do echo "got: $line"; done',
        token=token,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERDER_")}
    env.update({"HERDER_URL": served.url, "HERDER_TOKEN": token})
    proc = subprocess.Popen(
        [*HERDER, "daemon", "attach", "echoer"],
        stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT,
    )  # fmt: skip
    seen = b""

    def read_until(wanted: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 20
        while wanted not in seen:
            assert time.monotonic() < deadline, seen
            if select.select([master], [], [], 0.2)[0]:
                seen += os.read(master, 4096)

    try:
        read_until(b"Ctrl-] detaches")
        os.write(master, b"hello herder\r")
        read_until(b"got: hello herder\r\n")
        os.write(master, b"\x1d")
        read_until(b"detached from echoer")
        assert proc.wait(timeout=20) == 0
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
        served.herder("daemon", "kill", "echoer", "--wipe", token=token)


def _on_a_terminal(served: Served, *args: str, token: str) -> str:
    """What `herder ARGS` writes to its stderr when that is a terminal (a pty)."""
    import pty

    env = {k: v for k, v in os.environ.items() if not k.startswith("HERDER_")}
    env.update({"HERDER_URL": served.url, "HERDER_TOKEN": token})
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*HERDER, *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower, env=env, cwd=ROOT,
    )  # fmt: skip
    os.close(follower)
    seen = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the command ended and closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=60) == 0, seen
    finally:
        os.close(leader)
    return seen.decode(errors="replace")


def test_spawn_shows_a_spinner_on_a_terminal_only(served: Served) -> None:
    token = served.token()
    spawn = ("daemon", "spawn", "spun", SCRIPT_IMAGE, "-f", "run.sh=sleep 600")
    shown = _on_a_terminal(served, *spawn, token=token)
    assert "\r| spawning daemon spun from " in shown, shown  # the spinner, redrawn in place
    assert "\r\x1b[K" in shown  # and cleared when it ends
    piped = served.herder(*spawn, token=token)
    assert piped.returncode == 0 and "\r" not in piped.stderr and "|" not in piped.stderr
    served.herder("daemon", "kill", "spun", "--wipe", token=token)


def test_golem_start_shows_a_spinner_on_a_terminal(served: Served) -> None:
    token = served.token()
    webstrate = f"spin-{secrets.token_hex(3)}"
    shown = _on_a_terminal(served, "golem", "spawn", webstrate, token=token)
    assert f"\r| starting the golem of {webstrate}... " in shown, shown  # the spinner
    assert "\r\x1b[K" in shown, shown  # cleared when it ends
    assert served.herder("golem", "kill", webstrate, token=token).returncode == 0


def test_a_long_wait_off_a_terminal_is_one_plain_line(served: Served) -> None:
    """Piped, a wait shows as one plain line once it has lasted 2 s: no spinner,
    no carriage return."""
    token = served.token()
    slow = served.herder(
        "minion", "run", "python", "-f", "main.sh=sleep 3; echo slept", token=token
    )
    assert slow.returncode == 0 and slow.stdout == "slept\n", (slow.stdout, slow.stderr)
    assert slow.stderr == "running a minion in python...\n", slow.stderr
