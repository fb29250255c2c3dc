"""A test daemon image that runs the `run.sh` it is spawned with (a daemon's
files land in /minion): `sh /minion/run.sh`, on the busybox test image."""

from __future__ import annotations

import asyncio
import subprocess

from .images import BUSYBOX_IMAGE, ensure_busybox_image

SCRIPT_IMAGE = "herder-test/busybox-script:1"
_lock = asyncio.Lock()


def _build() -> None:
    if subprocess.run(["docker", "image", "inspect", SCRIPT_IMAGE], capture_output=True).returncode:
        dockerfile = f'FROM {BUSYBOX_IMAGE}\nCMD ["sh", "/minion/run.sh"]\n'
        subprocess.run(
            ["docker", "build", "-q", "-t", SCRIPT_IMAGE, "-"],
            input=dockerfile.encode(),
            check=True,
            capture_output=True,
            env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin"},
        )


async def ensure_script_image() -> str:
    await ensure_busybox_image()
    async with _lock:
        await asyncio.to_thread(_build)
    return SCRIPT_IMAGE
