"""Real headless Chromium (Debian's, from scripts/ensure-chromium) driven over
the DevTools protocol with aiohttp: navigate, evaluate, downloads; and the
launch flags and binary the Selenium tests use too."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

# The launch flags of every browser test, over DevTools here or through
# Selenium (tests/test_console_browser.py): headless, and nothing that would
# reach for a network this machine does not have.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium_binary() -> str:
    """Debian's Chromium (and its ChromeDriver), installed by scripts/ensure-chromium
    when either is missing."""
    found = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists() or not Path(CHROMEDRIVER).exists():
        scripts = Path(__file__).resolve().parent.parent / "scripts" / "ensure-chromium"
        subprocess.run([str(scripts)], check=True, capture_output=True)
    return found


class Page:
    """One tab, over its DevTools WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        await self.ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        async with asyncio.timeout(30):
            while True:
                message = json.loads((await self.ws.receive()).data)
                if message.get("id") == ident:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    result: dict[str, Any] = message.get("result", {})
                    return result
                self.events.append(message)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        for _ in range(200):
            state = await self.evaluate("[document.readyState, location.href]")
            if state[0] == "complete" and state[1] != "about:blank":
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"Chromium did not load {url}")


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Page]:
    """A fresh headless Chromium (its own profile dir) and its first tab."""
    proc = await asyncio.create_subprocess_exec(
        chromium_binary(),
        *FLAGS,
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        port = None
        async with asyncio.timeout(60):
            while port is None:
                line = (await proc.stderr.readline()).decode(errors="replace")
                if not line:
                    pytest.fail("Chromium exited before DevTools listened")
                found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
                port = int(found.group(1)) if found else None
        # Keep reading its log, so a full pipe never stops the browser.
        drain = asyncio.create_task(_drain(proc.stderr))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            page = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                tab = Page(ws)
                await tab.send("Page.enable")
                yield tab
        drain.cancel()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(1 << 16):
        pass
