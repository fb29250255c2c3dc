"""The client commands never print a traceback: a server answering in an
unexpected shape, a bad URL or an unwritable output path is one line on
stderr and exit code 1 (a canned HTTP server stands in for the herder)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

ANSWERS = {
    "/healthz": (b"not json at all", "text/plain"),
    "/daemon/v1/ls": (b"[1, 2, 3]", "application/json"),
    "/minion/v1/spawn": (b"%PDF-1.4 bytes", "application/pdf"),
}


class Canned(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body, content_type = ANSWERS.get(self.path.split("?")[0], (b"[]", "application/json"))
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def herder(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERDER_")}
    env.update(HERDER_URL=url, HERDER_TOKEN="a.b.c")
    return subprocess.run(
        [sys.executable, "-m", "herder", *args],
        capture_output=True, text=True, env=env, timeout=60, cwd=ROOT,
    )  # fmt: skip


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("herder: "), result.stderr
    return lines[0]


def test_unexpected_answers_are_one_line(canned: str) -> None:
    one_line(herder("ping", url=canned))  # 200 but not JSON
    assert "shape" in one_line(herder("daemon", "ls", url=canned))  # a list of numbers


def test_an_unwritable_output_path_is_refused_before_the_run(canned: str, tmp_path: Path) -> None:
    (tmp_path / "main.sh").write_text("echo hi\n")
    line = one_line(
        herder(
            "minion",
            "run",
            "python",
            "-f",
            f"main.sh=@{tmp_path / 'main.sh'}",
            "--output",
            "out.pdf",
            "-O",
            str(tmp_path / "no" / "such" / "dir" / "out.pdf"),
            url=canned,
        )  # fmt: skip
    )
    assert "not a writable directory" in line


def test_a_malformed_url_is_one_line(canned: str) -> None:
    one_line(herder("daemon", "attach", "web", url="http://[::1"))
