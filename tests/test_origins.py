"""No tenant script runs in the herder's origin (in real Chromium).

A daemon's page behind the proxy, or a minion's HTML output, used to be
served from the herder's own origin: its scripts could read what the
herder's pages stored (the console's tokens) and set cookies for the whole
herder. Now the path route sends `Content-Security-Policy: sandbox` (an
opaque origin), the host route (`<Name>.<PROXY_DOMAIN>`) is an origin of its
own, daemon cookies are scoped to the daemon, and active minion outputs are
attachments.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from herder.settings import Settings

from .chromium import chromium
from .conftest import TokenMaker, auth, make_settings
from .test_daemons import (
    remove_what_the_test_made,  # noqa: F401  (autouse: removes what the test made)
)
from .test_isolation import spawn_daemon

pytestmark = pytest.mark.docker

SECRET = "herder-origin-secret-42"

# What a tenant's page tries: the herder origin's storage and cookies.
READER = """<!doctype html><title>reading</title><script>
var r = {origin: String(self.origin)};
try { r.storage = localStorage.getItem("secret"); } catch (e) { r.storage = "blocked: " + e.name; }
try { r.cookie = document.cookie; } catch (e) { r.cookie = "blocked: " + e.name; }
document.title = JSON.stringify(r);
</script>"""

# A daemon (python's http.server) serving READER with cookies of every scope.
PAGE_SERVER = """\
import http.server, json

class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/headers"):
            body = json.dumps(dict(self.headers.items())).encode()
            kind = "application/json"
        else:
            body = open("/minion/reader.html", "rb").read()
            kind = "text/html"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "tenant=1; Path=/")
        self.send_header("Set-Cookie", "wide=1; Domain=localhost; Path=/; HttpOnly")
        self.send_header("Set-Cookie", "bare=1")
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer(("", 8080), Page).serve_forever()
"""


@pytest.fixture
def client(served_client: TestClient[Any, Any]) -> TestClient[Any, Any]:
    """Through the server `herder serve` runs, the proxy's front door included."""
    return served_client


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path / "data", daemon_bind_address="127.0.0.1", proxy_domain="localhost"
    )


async def page_daemon(client: Any, token: str) -> dict[str, Any]:
    daemon = await spawn_daemon(
        client,
        token,
        name="page",
        image="herder/python:bookworm",
        ports="[8080]",
        **{
            "main.sh": "exec python3 -u /minion/server.py\n",
            "server.py": PAGE_SERVER,
            "reader.html": READER,
        },
    )
    for _ in range(100):
        resp = await client.get(f"/daemon/v1/proxy/{daemon['Name']}/")
        if resp.status == 200:
            return daemon
        await asyncio.sleep(0.1)
    pytest.fail(f"the page daemon does not answer: {resp.status} {await resp.text()}")


async def test_a_proxied_page_cannot_read_what_the_herder_origin_stored(
    client: Any, token: str, tmp_path: Path
) -> None:
    daemon = await page_daemon(client, token)
    name = daemon["Name"]
    herder = f"http://127.0.0.1:{client.port}"
    prefix = f"/daemon/v1/proxy/{name}"

    host = f"{name}.localhost:{client.port}"
    async with chromium(tmp_path / "profile") as page:
        await page.navigate(f"{herder}/golem/v1/")
        await page.evaluate(
            f"localStorage.setItem('secret', '{SECRET}'); "
            f"document.cookie = 'secret={SECRET}; path=/'; document.cookie"
        )
        assert SECRET in await page.evaluate("document.cookie")

        await page.navigate(f"{herder}{prefix}/")
        seen = json.loads(await page.evaluate("document.title"))
        assert seen["origin"] == "null", seen
        assert seen["storage"].startswith("blocked"), seen
        assert seen["cookie"].startswith("blocked"), seen

        await page.navigate(f"http://{host}/")
        seen = json.loads(await page.evaluate("document.title"))
        assert seen["origin"] == f"http://{host}", seen
        assert seen["storage"] is None and SECRET not in seen["cookie"], seen

        # The herder's origin still holds its value (the test would prove nothing otherwise).
        await page.navigate(f"{herder}/golem/v1/")
        assert await page.evaluate("localStorage.getItem('secret')") == SECRET
        # and the daemon's cookies did not land on the herder's own paths.
        assert "tenant" not in await page.evaluate("document.cookie")

    # What the browser is told: an opaque origin, cookies kept to the daemon.
    resp = await client.get(f"{prefix}/")
    csp = resp.headers.getall("Content-Security-Policy")
    assert any(p.startswith("sandbox") and "allow-same-origin" not in p for p in csp), csp
    cookies = sorted(resp.headers.getall("Set-Cookie"))
    assert cookies == [
        f"bare=1; Path={prefix}/",
        f"tenant=1; Path={prefix}/",
        f"wide=1; Path={prefix}/; HttpOnly",
    ], cookies
    # On its own origin, the daemon keeps its paths but no cookie reaches beyond its host.
    resp = await client.get("/", headers={"Host": host})
    assert resp.status == 200 and "reading" in await resp.text()
    assert "Content-Security-Policy" not in resp.headers
    assert sorted(resp.headers.getall("Set-Cookie")) == [
        "bare=1",
        "tenant=1; Path=/",
        "wide=1; Path=/; HttpOnly",
    ]
    # The herder's own routes are not reachable on a daemon's host.
    resp = await client.get("/token/v1/balance", headers={"Host": host, **auth(token)})
    assert "credits" not in await resp.text()


async def test_an_html_minion_output_downloads_instead_of_rendering(
    client: Any, make_token: TokenMaker, tmp_path: Path
) -> None:
    token = make_token()
    herder = f"http://127.0.0.1:{client.port}"
    html = "<!doctype html><title>rendered</title><p>tenant html</p>"
    # (one line: a form sends a textarea's newlines as CR LF)
    script = f"printf '%s' '{html}' > out.html"

    resp = await client.post(
        "/minion/v1/spawn",
        data={"env": "python", "main.sh": script, "output": "out.html"},
        headers=auth(token),
    )
    assert resp.status == 200, await resp.text()
    assert await resp.text() == html
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="out.html"'
    assert resp.headers["Content-Security-Policy"].startswith("sandbox")

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    async with chromium(tmp_path / "profile") as page:
        await page.send(
            "Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads)
        )
        await page.navigate(f"{herder}/golem/v1/")
        # A form in the herder's origin posts the run; its answer is the HTML file.
        await page.evaluate(
            f"""(() => {{
              const form = document.createElement("form");
              form.method = "POST";
              form.enctype = "multipart/form-data";
              form.action = "/minion/v1/spawn?token={token}";
              for (const [k, v] of Object.entries({json.dumps({"env": "python", "main.sh": script, "output": "out.html"})})) {{
                const input = document.createElement("textarea");
                input.name = k; input.value = v; form.appendChild(input);
              }}
              document.documentElement.appendChild(form);
              form.submit();
              return true;
            }})()"""
        )
        for _ in range(300):
            if (downloads / "out.html").exists():
                break
            await asyncio.sleep(0.1)
        assert (downloads / "out.html").read_text() == html
        # The page stayed where it was: the output did not render in the herder's origin.
        assert await page.evaluate("location.pathname") == "/golem/v1/"
        assert await page.evaluate("document.title") != "rendered"
