"""Tiny test images made offline: busybox-static imported into Docker."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

BUSYBOX_IMAGE = "herder-test/busybox:1"
_lock = asyncio.Lock()


def _busybox_binary() -> Path:
    """A statically linked busybox (scripts/test installs busybox-static)."""
    path = shutil.which("busybox") or "/bin/busybox"
    if not _is_static(path):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "busybox-static"],
            check=True,
            capture_output=True,
        )
        path = "/bin/busybox"
    return Path(path)


def _is_static(path: str) -> bool:
    if not Path(path).exists():
        return False
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
    return "not a dynamic" in out.stdout + out.stderr


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


def build_on_busybox(tag: str, cmd: list[str], extra: str = "") -> None:
    """Build `tag`: the busybox test image with `cmd` as its command and
    `extra` Dockerfile lines (once per machine)."""
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
        return
    dockerfile = f"FROM {BUSYBOX_IMAGE}\n{extra}\nCMD {json.dumps(cmd)}\n"
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, "-"],
        input=dockerfile.encode(),
        check=True,
        capture_output=True,
        env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin"},
    )


async def ensure_httpd_image() -> str:
    """A busybox image whose command serves /minion over HTTP on port 80."""
    await ensure_busybox_image()
    async with _lock:
        await asyncio.to_thread(
            build_on_busybox, HTTPD_IMAGE, ["httpd", "-f", "-v", "-p", "80", "-h", "/minion"]
        )
    return HTTPD_IMAGE


ECHO_IMAGE = "herder-test/echo:1"
ECHO_BASE = "herder/python:bookworm"
ECHO_DIR = Path(__file__).resolve().parent.parent / "images" / "echo"
_echo_lock = asyncio.Lock()


def _echo_context() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(ECHO_DIR.iterdir()):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


async def ensure_echo_image() -> str:
    """The tag of the echo upstream (`images/echo`), built through the
    engine's build API once per machine; it needs the python environment image."""
    import aiodocker

    async with _echo_lock:
        docker = aiodocker.Docker()
        try:
            try:
                await docker.images.inspect(ECHO_IMAGE)
                return ECHO_IMAGE
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise
            try:
                await docker.images.inspect(ECHO_BASE)
            except aiodocker.DockerError:
                import pytest

                pytest.fail(f"{ECHO_BASE} is missing: run `herder images build python` first")
            context = await asyncio.to_thread(_echo_context)
            await docker.images.build(
                fileobj=io.BytesIO(context),
                encoding="gzip",
                tag=ECHO_IMAGE,
                labels={"herder.test": "1"},
                rm=True,
                forcerm=True,
            )
        finally:
            await docker.close()
    return ECHO_IMAGE


CAT_IMAGE = "herder-test/busybox-cat:1"


async def ensure_command_image(tag: str, cmd: list[str]) -> str:
    """A busybox image whose command is `cmd` (daemons run their image's own command)."""
    await ensure_busybox_image()
    async with _lock:
        await asyncio.to_thread(build_on_busybox, tag, cmd)
    return tag


VOLUME_IMAGE = "herder-test/busybox-volume:1"


async def ensure_volume_image() -> str:
    """A busybox image declaring `VOLUME /cache`: each container gets an anonymous volume."""
    await ensure_busybox_image()
    async with _lock:
        await asyncio.to_thread(build_on_busybox, VOLUME_IMAGE, ["sleep", "3600"], "VOLUME /cache")
    return VOLUME_IMAGE


async def ensure_cat_image() -> str:
    """A busybox image running `cat`: what goes to its stdin comes out of its stdout."""
    return await ensure_command_image(CAT_IMAGE, ["cat"])


ROOT_PYTHON_IMAGE = "herder-test/python-root:1"
_root_python_lock = asyncio.Lock()


def _build_root_python() -> None:
    if (
        subprocess.run(
            ["docker", "image", "inspect", ROOT_PYTHON_IMAGE], capture_output=True
        ).returncode
        == 0
    ):
        return
    dockerfile = (
        'FROM herder/python:bookworm\nUSER root\nCMD ["python3", "-u", "/minion/main.py"]\n'
    )
    subprocess.run(
        ["docker", "build", "-q", "--label", "herder.test=1", "-t", ROOT_PYTHON_IMAGE, "-"],
        input=dockerfile.encode(),
        check=True,
        capture_output=True,
        env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin"},
    )


async def ensure_root_python_image() -> str:
    """The python environment image running `/minion/main.py` as root, with
    the capabilities the herder leaves it (a hostile tenant's daemon)."""
    async with _root_python_lock:
        await asyncio.to_thread(_build_root_python)
    return ROOT_PYTHON_IMAGE
