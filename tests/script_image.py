"""A test daemon image that runs the `run.sh` it is spawned with (a daemon's
files land in /minion): `sh /minion/run.sh`, on the busybox test image."""

from __future__ import annotations

import asyncio

from .images import build_on_busybox, ensure_busybox_image

SCRIPT_IMAGE = "herder-test/busybox-script:1"
_lock = asyncio.Lock()


async def ensure_script_image() -> str:
    await ensure_busybox_image()
    async with _lock:
        await asyncio.to_thread(build_on_busybox, SCRIPT_IMAGE, ["sh", "/minion/run.sh"])
    return SCRIPT_IMAGE
