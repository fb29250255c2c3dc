"""The application shell: JSON errors, no tracebacks, CORS, health."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from herder.app import create_app

from .conftest import make_settings


async def test_unknown_route_is_json_404(client: Any) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404
    assert resp.content_type == "application/json"
    assert (await resp.json())["error"]


async def test_wrong_method_is_json_405(client: Any) -> None:
    resp = await client.put("/healthz")
    assert resp.status == 405
    assert (await resp.json())["error"]


async def test_unexpected_error_is_plain_500(tmp_path: Path, aiohttp_client: Any) -> None:
    app = create_app(make_settings(tmp_path / "d"))

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internal detail /etc/shadow")

    app.router.add_get("/boom", boom)
    client = await aiohttp_client(app)
    resp = await client.get("/boom")
    assert resp.status == 500
    text = await resp.text()
    assert "secret internal detail" not in text and "Traceback" not in text
    assert (await resp.json())["error"] == "internal error"


async def test_cors_is_open(client: Any) -> None:
    resp = await client.get("/healthz", headers={"Origin": "http://elsewhere.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    resp = await client.options(
        "/minion/v1/spawn",
        headers={"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"},
    )
    assert resp.status == 204
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]


async def test_healthz_reports_database_and_docker(client: Any, docker: Any) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    body = await resp.json()
    assert body["ok"] is True
    assert body["database"]["ok"] and body["docker"]["ok"]
    assert body["database"]["ms"] >= 0


async def test_healthz_is_503_without_docker(tmp_path: Path, aiohttp_client: Any) -> None:
    settings = make_settings(tmp_path / "d", docker_url="unix:///nonexistent/docker.sock")
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/healthz")
    assert resp.status == 503
    body = await resp.json()
    assert body["docker"]["ok"] is False and body["database"]["ok"] is True


async def test_errors_carry_cors_and_a_request_id(client: Any) -> None:
    resp = await client.get("/nope", headers={"Origin": "http://elsewhere.example"})
    assert resp.status == 404
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    again = await client.get("/nope")
    assert resp.headers["X-Request-Id"] != again.headers["X-Request-Id"]
