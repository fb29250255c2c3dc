"""The console's routes against the real app: pages with a strict CSP, the
OpenAPI document (validated, and listing exactly the routes the app serves),
attach tickets on a real daemon, and the caller's recent charges."""

from __future__ import annotations

import asyncio
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from herder.api import DOCS
from herder.app import create_app
from herder.console import STATIC
from herder.openapi import DocsMismatch, document, served_operations
from herder.settings import Settings

from .conftest import TokenMaker, auth, make_settings
from .daemon_fixtures import Daemons, SpawnedDaemon
from .images import ensure_cat_image

METHODS = {"get", "put", "post", "delete", "options", "head", "patch"}


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """A test herder's settings; on the ledger `database_url` gives when the
    test asks for one (SQLite and PostgreSQL, by that fixture's params)."""
    extra = {}
    if "database_url" in request.fixturenames:
        extra["database_url"] = request.getfixturevalue("database_url")
    return make_settings(tmp_path / "data", daemon_bind_address="127.0.0.1", **extra)


# -- pages ----------------------------------------------------------------------


class _Scripts(HTMLParser):
    """Every <script> of a page and every inline event handler attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline_text = ""
        self.handlers: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handlers += [name for name, _ in attrs if name.startswith("on")]
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline_text += data.strip()


@pytest.mark.parametrize("path", ["/console/", "/console/api"])
async def test_pages_have_a_strict_csp_and_no_inline_script(
    client: TestClient[Any, Any], path: str
) -> None:
    async with client.get(path) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        csp = resp.headers["Content-Security-Policy"]
        page = await resp.text()
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-eval" not in csp and "'unsafe-inline'" not in directives["script-src"]
    parsed = _Scripts()
    parsed.feed(page)
    assert parsed.scripts and all(s.get("src") for s in parsed.scripts)
    assert parsed.inline_text == "" and parsed.handlers == []
    for script in parsed.scripts:  # every script the page names is served
        src = str(script["src"])
        async with client.get(f"/console/{src}") as resp:
            assert resp.status == 200, src
            assert resp.content_type == "text/javascript"


async def test_console_redirect_and_static_files(client: TestClient[Any, Any]) -> None:
    async with client.get("/console", allow_redirects=False) as resp:
        assert resp.status == 301 and resp.headers["Location"] == "/console/"
    async with client.get("/console/static/vendor/xterm/xterm.css") as resp:
        assert resp.status == 200 and resp.content_type == "text/css"
    for bad in (
        "nothing.js",
        "vendor/xterm/LICENSE",
        "../__init__.py",
        ".hidden.js",
        "%2e%2e/x.js",
    ):
        async with client.get(f"/console/static/{bad}") as resp:
            assert resp.status == 404, bad
            assert "error" in await resp.json()


def test_vendored_code_names_its_version_and_licence() -> None:
    for package in ("xterm", "addon-fit"):
        folder = STATIC / "vendor" / package
        assert "Permission is hereby granted, free of charge" in (folder / "LICENSE").read_text()
        assert '"license": "MIT"' in (folder / "VERSION.json").read_text()
        assert re.search(r'"version": "\d+\.\d+\.\d+"', (folder / "VERSION.json").read_text())


async def test_emet_script_is_unchanged_at_root(client: TestClient[Any, Any]) -> None:
    async with client.get("/") as resp:
        assert resp.status == 200 and resp.content_type == "text/javascript"
        assert "Content-Security-Policy" not in resp.headers
        assert "emet" in await resp.text()


async def test_config_names_public_facts(client: TestClient[Any, Any], settings: Settings) -> None:
    async with client.get("/console/config.json") as resp:
        config = await resp.json()
    assert config["webstrates_url"] == settings.webstrates_url
    assert config["credit_rate"] == settings.credit_rate
    assert config["proxy_domain"] == settings.proxy_domain == ""  # off unless set


# -- the OpenAPI document -------------------------------------------------------------


async def test_openapi_document_validates_and_lists_every_route(
    client: TestClient[Any, Any],
) -> None:
    async with client.get("/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    validate(doc)  # OpenAPI 3.1, by openapi-spec-validator
    assert doc["openapi"].startswith("3.1")
    listed = {
        (method, path)
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }
    for route in client.app.router.routes():
        info = route.get_info()
        path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", info.get("path") or info["formatter"])
        method = route.method.lower()
        if method == "*":
            assert {(m, path) for m in METHODS} <= listed, path
        else:
            assert (method, path) in listed, (method, path)
    for path, item in doc["paths"].items():
        for name in re.findall(r"\{(\w+)\}", path):
            for op in item.values():
                assert any(p["name"] == name and p["in"] == "path" for p in op["parameters"])
    spawn = doc["paths"]["/daemon/v1/spawn"]["post"]
    assert spawn["security"] and "multipart/form-data" in spawn["requestBody"]["content"]
    assert spawn["responses"]["402"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_a_route_without_docs_is_refused(settings: Settings) -> None:
    app = create_app(settings)

    async def extra(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/undocumented/{x}", extra)
    with pytest.raises(DocsMismatch, match="undocumented"):
        document(app.router.routes(), DOCS, version="1", server="http://h")
    served = served_operations(create_app(settings).router.routes())
    with pytest.raises(DocsMismatch, match="docs without a route"):
        document(
            [r for r in create_app(settings).router.routes() if r.method != "POST"],
            DOCS,
            version="1",
            server="http://h",
        )
    assert ("get", "/openapi.json") in served


# -- attach tickets -------------------------------------------------------------


@pytest.fixture
async def cat(daemons: Daemons, token: str) -> SpawnedDaemon:
    return await daemons.spawn(token, await ensure_cat_image())


async def _ticket(client: TestClient[Any, Any], name: str, token: str) -> str:
    async with client.post(f"/daemon/v1/attach-ticket/{name}", headers=auth(token)) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert token not in str(body) and body["expires_in"] > 0
    return str(body["ticket"])


@pytest.mark.docker
async def test_attach_with_a_single_use_ticket(
    client: TestClient[Any, Any], cat: SpawnedDaemon, token: str, make_token: TokenMaker
) -> None:
    ticket = await _ticket(client, cat.name, token)
    url = f"/daemon/v1/attach/{cat.name}?ticket={ticket}"
    async with client.ws_connect(url) as ws:
        await ws.send_str("by ticket\n")
        seen = ""
        while "by ticket\n" not in seen:
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            seen += msg.data
    # used once: the same ticket again is refused before the upgrade
    async with client.get(url) as resp:
        assert resp.status == 401
        assert "ticket" in (await resp.json())["error"]
    async with client.get(f"/daemon/v1/attach/{cat.name}?ticket=made-up") as resp:
        assert resp.status == 401
    # another subject cannot get a ticket for it, nor attach with one of theirs
    other = make_token("other@example.org")
    async with client.post(f"/daemon/v1/attach-ticket/{cat.name}", headers=auth(other)) as resp:
        assert resp.status == 404
    async with client.post(f"/daemon/v1/attach-ticket/{cat.name}") as resp:
        assert resp.status == 401


@pytest.mark.docker
async def test_a_ticket_is_for_one_daemon(
    client: TestClient[Any, Any], daemons: Daemons, cat: SpawnedDaemon, token: str
) -> None:
    second = await daemons.spawn(token, await ensure_cat_image())
    ticket = await _ticket(client, cat.name, token)
    async with client.get(f"/daemon/v1/attach/{second.name}?ticket={ticket}") as resp:
        assert resp.status == 401
        assert "another daemon" in (await resp.json())["error"]


# -- recent charges -------------------------------------------------------------------


@pytest.mark.docker
async def test_charges_show_the_running_daemon_and_its_rate(
    database_url: str, client: TestClient[Any, Any], cat: SpawnedDaemon, token: str
) -> None:
    async with client.get("/token/v1/charges", headers=auth(token)) as resp:
        assert resp.status == 200
        first = await resp.json()
    assert first["rate"] == 1 and first["running"] == [{"kind": "daemon", "name": cat.name}]
    charge = first["charges"][0]
    assert charge["kind"] == "daemon" and charge["workload"].startswith(cat.name)
    for _ in range(100):  # the metering loop charges the run's row every second
        async with client.get("/token/v1/charges?limit=1", headers=auth(token)) as resp:
            later = await resp.json()
        if later["credits"] < first["credits"] and later["charges"][0]["credits"] > 0:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError(f"no charge while the daemon ran: {first} {later}")
    assert len(later["charges"]) == 1 and later["charges"][0]["id"] == charge["id"]


async def test_charges_need_a_token_and_a_sane_limit(
    client: TestClient[Any, Any], token: str
) -> None:
    async with client.get("/token/v1/charges") as resp:
        assert resp.status == 401
    for bad in ("0", "201", "-1", "x", "1e3"):
        async with client.get(f"/token/v1/charges?limit={bad}", headers=auth(token)) as resp:
            assert resp.status == 400, bad
            assert "limit" in (await resp.json())["error"]
    async with client.get("/token/v1/charges", headers=auth(token)) as resp:
        body = await resp.json()
    assert body == {"email": body["email"], "credits": 1000, "rate": 0, "running": [],
                    "charges": []}  # fmt: skip
