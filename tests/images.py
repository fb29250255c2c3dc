"""Tiny test images made offline: busybox-static imported into Docker."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

BUSYBOX_IMAGE = "herder-test/busybox:1"
_lock = asyncio.Lock()


def _busybox_binary() -> Path:
    path = shutil.which("busybox")
    if path is None or "static" not in subprocess.run(
        ["file", "-b", path], capture_output=True, text=True, check=False
    ).stdout + _static_hint(path):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "busybox-static"],
            check=True,
            capture_output=True,
        )
        path = "/bin/busybox"
    return Path(path)


def _static_hint(path: str) -> str:
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
    return "static" if "not a dynamic" in (out.stdout + out.stderr) else ""


def _build() -> None:
    if (
        subprocess.run(
            ["docker", "image", "inspect", BUSYBOX_IMAGE], capture_output=True
        ).returncode
        == 0
    ):
        return
    binary = _busybox_binary().read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "tmp", "minion", "www"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(binary), 0o755
        tar.addfile(info, io.BytesIO(binary))
        for applet in (
            "sh",
            "cat",
            "httpd",
            "sleep",
            "echo",
            "ls",
            "wc",
            "head",
            "yes",
            "true",
            "env",
        ):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    subprocess.run(
        ["docker", "import", "-c", "ENV PATH=/bin", "-c", 'CMD ["sh"]', "-", BUSYBOX_IMAGE],
        input=buffer.getvalue(),
        check=True,
        capture_output=True,
    )


async def ensure_busybox_image() -> str:
    """The image tag of a busybox-static image (built once per machine)."""
    async with _lock:
        await asyncio.to_thread(_build)
    return BUSYBOX_IMAGE


HTTPD_IMAGE = "herder-test/busybox-httpd:1"


def _build_httpd() -> None:
    if (
        subprocess.run(["docker", "image", "inspect", HTTPD_IMAGE], capture_output=True).returncode
        == 0
    ):
        return
    dockerfile = f'FROM {BUSYBOX_IMAGE}\nCMD ["httpd", "-f", "-v", "-p", "80", "-h", "/minion"]\n'
    subprocess.run(
        ["docker", "build", "-q", "-t", HTTPD_IMAGE, "-"],
        input=dockerfile.encode(),
        check=True,
        capture_output=True,
        env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )


async def ensure_httpd_image() -> str:
    """A busybox image whose command serves /minion over HTTP on port 80."""
    await ensure_busybox_image()
    async with _lock:
        await asyncio.to_thread(_build_httpd)
    return HTTPD_IMAGE
