"""`herder images build` progress: a status line per image on a terminal
(steps, bytes from the mirror), plain lines elsewhere."""

from __future__ import annotations

import io
import os
import pty
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from herder.runtime.build_progress import BuildReporter, size_text

ROOT = Path(__file__).resolve().parent.parent
HERDER = [sys.executable, "-m", "herder"]


def test_status_line_counts_steps_and_bytes() -> None:
    out = io.StringIO()
    report = BuildReporter(out, width=200)
    report("herder/python:bookworm: building images/python on herder/base:bookworm")
    report("python: Step 2/5 : RUN apt-get update")
    report("python: Get:1 http://deb.debian.org/debian bookworm/main amd64 libexpat1 [1,234 kB]")
    report("python: Get:2 http://deb.debian.org/debian bookworm/main amd64 python3.11 [600 B]")
    report("python: Step 3/5 : COPY x /x")
    report("herder/python:bookworm: built in 12s")
    report.close()
    text = out.getvalue()
    lines = text.split("\r\x1b[K")
    assert "herder/python:bookworm: building images/python on herder/base:bookworm\n" in lines
    assert any(line.startswith("python · step 2/5 · 1.2 MB fetched") for line in lines), lines
    assert any(line.startswith("python · step 3/5 · 1.2 MB fetched") for line in lines), lines
    assert lines[-2] == "herder/python:bookworm: built in 12s\n"
    assert size_text(999) == "999 B" and size_text(1_234_600) == "1.2 MB"


def test_debootstrap_packages_are_counted() -> None:
    out = io.StringIO()
    report = BuildReporter(out, width=200)
    for package in ("libc6", "base-files", "dash"):
        report(f"debootstrap: I: Retrieving {package} 1.0")
    assert out.getvalue().split("\r\x1b[K")[-1].startswith("debootstrap · 3 packages retrieved")


@pytest.fixture
def tiny_build(tmp_path: Path) -> tuple[dict[str, str], str]:
    """An images dir with one quick build (three steps on the base image)."""
    tag = f"herder-test/progress-{secrets.token_hex(3)}:1"
    (tmp_path / "images" / "tiny").mkdir(parents=True)
    (tmp_path / "images" / "tiny" / "Dockerfile").write_text(
        "ARG BASE=debian:bookworm-slim\nFROM ${BASE}\nRUN echo one\nRUN echo two\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERDER_")}
    env.update(
        HERDER_IMAGES_DIR=str(tmp_path / "images"),
        HERDER_IMAGES=f"tiny={tag}",
        HERDER_DATA_DIR=str(tmp_path / "data"),
    )
    yield env, tag
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)


@pytest.mark.docker
def test_build_on_a_terminal_and_in_a_pipe(tiny_build: tuple[dict[str, str], str]) -> None:
    env, tag = tiny_build
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*HERDER, "images", "build", "tiny"],
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert proc.wait(timeout=300) == 0, seen
    shown = seen.decode(errors="replace")
    assert f"{tag}: building images/tiny on " in shown
    assert "\r\x1b[Ktiny · step 3/5 · " in shown, shown  # the status line, redrawn in place
    assert shown.rstrip().endswith(f"built: {tag}")

    piped = subprocess.run(
        [*HERDER, "images", "build", "tiny", "--force"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert piped.returncode == 0, piped.stderr
    assert "\x1b" not in piped.stderr and "\r" not in piped.stderr
    assert "tiny: Step 3/5 : RUN echo one" in piped.stderr.splitlines()
    assert piped.stderr.splitlines()[-1] == f"built: {tag}"
