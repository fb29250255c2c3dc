"""Operations: /healthz turning 503 and back, /metrics, /node/v1/specs, request ids."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from herder.api import keys as appkeys
from herder.app import create_app
from herder.logfmt import JsonFormatter, RequestIdFilter
from herder.node import parse_nvidia_smi
from herder.settings import Settings

from .conftest import auth, make_settings
from .images import ensure_busybox_image
from .script_image import ensure_script_image

DOCKER_SOCKET = "/var/run/docker.sock"


class SocketRelay:
    """A unix socket that relays to the Docker socket while it is up.

    `down()` closes the listener and every relayed connection, so the
    herder's pooled keep-alive connections die too: Docker is really
    unreachable through it until `up()`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.path.unlink(missing_ok=True)
        self.server = await asyncio.start_unix_server(self._relay, path=str(self.path))

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self.writers):
                writer.close()
            await self.server.wait_closed()
            self.server = None
        self.writers.clear()
        self.path.unlink(missing_ok=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(DOCKER_SOCKET)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def sqlite_file(settings: Settings) -> Path:
    """The SQLite file of the default `database_url` in the data dir."""
    return settings.data_dir / "herder.db"


async def _health(client: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/healthz")
    return resp.status, await resp.json()


@pytest.mark.docker
async def test_healthz_503_when_docker_unreachable_and_back(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    relay = SocketRelay(tmp_path / "docker.sock")
    await relay.up()
    settings = make_settings(tmp_path / "d", docker_url=f"unix://{relay.path}")
    client = await aiohttp_client(create_app(settings))
    try:
        status, body = await _health(client)
        assert status == 200 and body["docker"]["ok"] is True
        await relay.down()
        status, body = await _health(client)
        assert status == 503
        assert body["ok"] is False and body["docker"]["ok"] is False
        assert body["database"]["ok"] is True
        assert body["docker"]["ms"] >= 0 and body["docker"]["error"]
        await relay.up()
        status, body = await _health(client)
        assert status == 200 and body["ok"] is True
    finally:
        await relay.down()


@pytest.mark.docker
async def test_healthz_503_when_database_file_unusable_and_back(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    settings = make_settings(tmp_path / "d")
    client = await aiohttp_client(create_app(settings))
    status, body = await _health(client)
    assert status == 200 and body["database"]["ok"] is True

    # We run as root, so chmod 000 would not stop us: put a directory where
    # the database file was (what an unmounted or replaced volume looks like).
    db = sqlite_file(settings)
    aside = db.with_name("herder.db.aside")
    db.rename(aside)
    db.mkdir()
    try:
        status, body = await _health(client)
        assert status == 503
        assert body["database"]["ok"] is False and body["docker"]["ok"] is True
        assert "Traceback" not in json.dumps(body)
    finally:
        db.rmdir()
        aside.rename(db)
    status, body = await _health(client)
    assert status == 200 and body["ok"] is True


@pytest.mark.docker
async def test_healthz_503_when_database_file_is_not_a_database(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    settings = make_settings(tmp_path / "d")
    client = await aiohttp_client(create_app(settings))
    db = sqlite_file(settings)
    aside = db.with_name("herder.db.aside")
    db.rename(aside)
    db.write_bytes(b"this is not an SQLite database" * 100)
    try:
        status, body = await _health(client)
        assert status == 503 and body["database"]["ok"] is False
    finally:
        db.unlink()
        aside.rename(db)
    assert (await _health(client))[0] == 200


def _families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    name = sample_name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
    for family in families.values():
        for sample in family.samples:
            if sample.name == sample_name and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                return float(sample.value)
    raise AssertionError(f"no sample {sample_name} {labels} (family {name})")


@pytest.fixture
async def running_daemon(client: Any, token: str) -> AsyncIterator[str]:
    """A daemon spawned through the API, removed afterwards."""
    form = {"name": "ops", "image": await ensure_script_image(), "run.sh": "sleep 600"}
    resp = await client.post("/daemon/v1/spawn", data=form, headers=auth(token))
    assert resp.status == 200, await resp.text()
    name = (await resp.json())["Name"]
    yield name
    await client.server.app[appkeys.RUNTIME].remove(name)


@pytest.mark.docker
async def test_metrics_parse_and_move(client: Any, running_daemon: str) -> None:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    families = _families(await resp.text())
    for family in (
        "herder_spawns",
        "herder_run_seconds",
        "herder_running_workloads",
        "herder_credits_charged",
        "herder_proxy_requests",
        "herder_proxy_bytes",
        "herder_websockets_open",
        "herder_http_requests",
    ):
        assert family in families, family
    assert _value(families, "herder_running_workloads", kind="daemon") == 1
    assert _value(families, "herder_running_workloads", kind="minion") == 0
    assert _value(families, "herder_engine_up") == 1
    before_ok = _value(families, "herder_spawns_total", kind="minion", outcome="ok")

    metrics = client.server.app[appkeys.METRICS]
    metrics.spawned("minion", ok=True)
    metrics.spawned("daemon", ok=False)
    metrics.run_seconds("minion", 1.5)
    await client.server.app[appkeys.LEDGER].charge("m@example.org", "jti-m", "minion", "x", 7, 7)
    metrics.proxied(100, 2000)
    metrics.websocket_opened("attach")

    families = _families(await (await client.get("/metrics")).text())
    assert _value(families, "herder_spawns_total", kind="minion", outcome="ok") == before_ok + 1
    assert _value(families, "herder_spawns_total", kind="daemon", outcome="failed") == 1
    assert _value(families, "herder_run_seconds_count", kind="minion") == 1
    assert _value(families, "herder_run_seconds_sum", kind="minion") == 1.5
    assert _value(families, "herder_credits_charged_total") == 7
    assert _value(families, "herder_proxy_bytes_total", direction="out") == 2000
    assert _value(families, "herder_websockets_open", kind="attach") == 1
    # the first scrape is counted once it is answered
    assert _value(families, "herder_http_requests_total", method="GET", status="2xx") >= 1


async def test_metrics_registries_are_per_app(tmp_path: Path, aiohttp_client: Any) -> None:
    one = create_app(make_settings(tmp_path / "one"))
    two = create_app(make_settings(tmp_path / "two"))
    one[appkeys.METRICS].spawned("daemon", ok=False)
    failed = b'herder_spawns_total{kind="daemon",outcome="failed"}'
    assert failed + b" 1.0" in one[appkeys.METRICS].exposition()
    assert failed + b" 0.0" in two[appkeys.METRICS].exposition()


async def test_metrics_answer_without_docker(tmp_path: Path, aiohttp_client: Any) -> None:
    settings = make_settings(tmp_path / "d", docker_url="unix:///nonexistent/docker.sock")
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/metrics")
    assert resp.status == 200
    families = _families(await resp.text())
    assert _value(families, "herder_engine_up") == 0


@pytest.mark.docker
async def test_node_specs(client: Any, running_daemon: str, docker: Any) -> None:
    resp = await client.get("/node/v1/specs")
    assert resp.status == 200
    specs = await resp.json()
    assert specs["CPU"]["Count"] >= 1
    assert specs["Memory"]["TotalBytes"] > 0
    assert specs["Disk"]["TotalBytes"] >= specs["Disk"]["FreeBytes"] > 0
    assert isinstance(specs["GPUs"], list)
    assert specs["Docker"]["Version"] == (await docker.version())["Version"]
    assert specs["Running"] == {"minion": 0, "daemon": 1, "golem": 0}


async def test_node_specs_503_without_docker(tmp_path: Path, aiohttp_client: Any) -> None:
    settings = make_settings(tmp_path / "d", docker_url="unix:///nonexistent/docker.sock")
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/node/v1/specs")
    assert resp.status == 503
    assert (await resp.json())["error"]


def test_nvidia_smi_output_parsed() -> None:
    out = "NVIDIA A100-SXM4-40GB, 40960, 535.104.05\nTesla T4, 15360, 535.104.05\n"
    assert parse_nvidia_smi(out) == [
        {"Name": "NVIDIA A100-SXM4-40GB", "MemoryBytes": 40960 << 20, "Driver": "535.104.05"},
        {"Name": "Tesla T4", "MemoryBytes": 15360 << 20, "Driver": "535.104.05"},
    ]
    assert parse_nvidia_smi("") == []


async def test_request_id_header_and_log_line(client: Any, caplog: Any) -> None:
    with caplog.at_level(logging.INFO, logger="herder"):
        resp = await client.get("/nope")
        given = await client.get("/nope", headers={"X-Request-Id": "my-trace.42"})
        hostile = await client.get("/nope", headers={"X-Request-Id": "x y <injected>"})
    request_id = resp.headers["X-Request-Id"]
    assert len(request_id) >= 8
    assert given.headers["X-Request-Id"] == "my-trace.42"
    assert hostile.headers["X-Request-Id"] != "x y <injected>"
    lines = [r for r in caplog.records if r.name == "herder" and getattr(r, "path", "") == "/nope"]
    assert len(lines) == 3
    assert [getattr(r, "status", None) for r in lines] == [404, 404, 404]
    formatted = JsonFormatter()
    request_filter = RequestIdFilter()
    record = lines[1]
    request_filter.filter(record)
    entry = json.loads(formatted.format(record))
    assert entry["request_id"] == "my-trace.42"
    assert entry["status"] == 404 and entry["method"] == "GET" and entry["path"] == "/nope"
    assert "token" not in entry["message"]


async def test_query_token_never_logged(client: Any, caplog: Any) -> None:
    with caplog.at_level(logging.INFO, logger="herder"):
        await client.get("/token/v1/balance?token=sekrit-token-value")
    assert "sekrit-token-value" not in caplog.text


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("//token/v1/inspect/{jwt}", "//token/v1/inspect/***"),
        ("/token/v1//inspect/{jwt}", "/token/v1//inspect/***"),
        ("/nope/{jwt}/after", "/nope/***/after"),
        ("/daemon/v1/proxy/nobody/x{jwt}.y", "/daemon/v1/proxy/nobody/x***.y"),
    ],
)
async def test_jwt_anywhere_in_a_path_is_redacted_from_the_log(
    client: Any, make_token: Any, caplog: Any, path: str, shown: str
) -> None:
    jwt = make_token()
    # Through the session: the test client refuses a path starting `//`.
    url = f"http://{client.host}:{client.port}{path.format(jwt=jwt)}"
    with caplog.at_level(logging.INFO, logger="herder"):
        async with client.session.get(url) as resp:
            assert resp.status == 404
    lines = [r for r in caplog.records if r.name == "herder" and hasattr(r, "path")]
    assert [r.path for r in lines] == [shown]
    assert f"GET {shown} 404" in lines[0].getMessage()
    for part in jwt.split("."):
        assert part not in caplog.text


@pytest.mark.docker
async def test_metrics_count_golem_spawns_failures_and_sockets(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    image = await ensure_busybox_image()
    # The test plays the golem: open control sockets (the key is test_golems' business).
    settings = make_settings(
        tmp_path / "d",
        golem_image=image,
        webstrates_url="http://127.0.0.1:9",
        golem_open_control=True,
    )
    client = await aiohttp_client(create_app(settings))
    webstrate = f"metrics-{secrets.token_hex(3)}"
    try:
        resp = await client.post(f"/golem/v1/spawn/{webstrate}")
        assert resp.status == 201, await resp.text()
        async with client.ws_connect(f"/golem/v1/connect/{webstrate}"):
            families = _families(await (await client.get("/metrics")).text())
            assert _value(families, "herder_websockets_open", kind="golem") == 1
        resp = await client.post(f"/golem/v1/kill/{webstrate}")
        assert resp.status == 200
    finally:
        runtime = client.server.app[appkeys.RUNTIME]
        for container in await runtime.list(
            {"herder.instance": client.server.app[appkeys.INSTANCE]}
        ):
            await runtime.remove(container.id)

    families = _families(await (await client.get("/metrics")).text())
    assert _value(families, "herder_spawns_total", kind="golem", outcome="ok") == 1
    assert _value(families, "herder_run_seconds_count", kind="golem") == 1
    assert _value(families, "herder_websockets_opened_total", kind="golem") == 1
    assert _value(families, "herder_websockets_open", kind="golem") == 0

    missing = make_settings(tmp_path / "e", golem_image="herder-test/no-such-image:none")
    other = await aiohttp_client(create_app(missing))
    assert (await other.post(f"/golem/v1/spawn/{webstrate}")).status == 404
    families = _families(await (await other.get("/metrics")).text())
    assert _value(families, "herder_spawns_total", kind="golem", outcome="failed") == 1


@pytest.mark.docker
async def test_one_log_line_per_container_event(client: Any, token: str, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="herder.containers")
    await asyncio.sleep(0.5)  # the event stream subscribes as the app starts
    form = {"name": "evt", "image": await ensure_script_image(), "run.sh": "sleep 600"}
    resp = await client.post("/daemon/v1/spawn", data=form, headers=auth(token))
    assert resp.status == 200, await resp.text()
    resp = await client.post("/daemon/v1/kill/evt", headers=auth(token))
    assert resp.status == 200, await resp.text()

    def logged(action: str) -> list[Any]:
        return [r for r in caplog.records if getattr(r, "event", "") == action]

    async with asyncio.timeout(20):
        while not logged("destroy"):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    assert len(logged("start")) == 1 and len(logged("die")) == 1
    die = logged("die")[0]
    assert getattr(die, "kind", "") == "daemon" and getattr(die, "workload", "") == "evt"
    assert isinstance(getattr(die, "exit_code", None), int)
    assert "die daemon evt" in die.getMessage() and "exit=" in die.getMessage()


@pytest.mark.docker
async def test_metrics_move_after_a_minion_spawn(client: Any, token: str) -> None:
    families = _families(await (await client.get("/metrics")).text())
    assert _value(families, "herder_spawns_total", kind="minion", outcome="ok") == 0
    resp = await client.post(
        "/minion/v1/spawn",
        data={"env": "python", "main.sh": "echo hello"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["StdOut"] == "hello\n"
    resp = await client.post(
        "/minion/v1/spawn",
        data={"env": "python", "main.sh": "echo hello"},
        headers={"Authorization": "Bearer nope"},
    )
    assert resp.status == 401
    families = _families(await (await client.get("/metrics")).text())
    assert _value(families, "herder_spawns_total", kind="minion", outcome="ok") == 1
    assert _value(families, "herder_spawns_total", kind="minion", outcome="failed") == 0
    assert _value(families, "herder_run_seconds_count", kind="minion") == 1
    assert _value(families, "herder_credits_charged_total") >= 1


@pytest.mark.docker
async def test_metrics_count_proxied_bytes_and_attach_sockets(client: Any, token: str) -> None:
    form = {
        "name": "web",
        "image": await ensure_script_image(),
        "ports": "[80]",
        "run.sh": "exec httpd -f -p 80 -h /minion",
        "page.txt": "x" * 1000,
    }
    resp = await client.post("/daemon/v1/spawn", data=form, headers=auth(token))
    assert resp.status == 200, await resp.text()
    name = (await resp.json())["Name"]
    try:
        for _ in range(50):
            resp = await client.get(f"/daemon/v1/proxy/{name}/page.txt")
            if resp.status == 200:
                break
            await asyncio.sleep(0.1)
        assert await resp.text() == "x" * 1000
        async with client.ws_connect("/daemon/v1/attach/web", headers=auth(token)):
            families = _families(await (await client.get("/metrics")).text())
            assert _value(families, "herder_websockets_open", kind="attach") == 1
    finally:
        await client.server.app[appkeys.RUNTIME].remove(name)
    families = _families(await (await client.get("/metrics")).text())
    assert _value(families, "herder_proxy_requests_total") >= 1
    assert _value(families, "herder_proxy_bytes_total", direction="out") >= 1000
    assert _value(families, "herder_websockets_opened_total", kind="attach") == 1
    assert _value(families, "herder_spawns_total", kind="daemon", outcome="ok") == 1


async def test_requests_counted_by_status_class(client: Any) -> None:
    for _ in range(3):
        await client.get("/nope")
    await client.put("/healthz")
    families = _families(await (await client.get("/metrics")).text())
    assert _value(families, "herder_http_requests_total", method="GET", status="4xx") == 3
    assert _value(families, "herder_http_requests_total", method="PUT", status="4xx") == 1


async def test_unknown_methods_share_one_label(client: Any) -> None:
    for method in ("PROPFIND", "MKCOL", "PURGE"):
        resp = await client.request(method, "/healthz")
        assert resp.status in (400, 405)
    families = _families(await (await client.get("/metrics")).text())
    methods = {
        sample.labels["method"]
        for family in families.values()
        for sample in family.samples
        if sample.name == "herder_http_requests_total"
    }
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}
    assert "other" in methods


async def test_a_cancelled_request_is_logged_as_499_not_500(tmp_path: Path, caplog: Any) -> None:
    """A request cancelled before its answer (the server shutting down) is
    not a server error: the log line and the metrics say 499."""
    from aiohttp.test_utils import make_mocked_request

    from herder.api.middleware import request_middleware

    app = create_app(make_settings(tmp_path / "d"))
    request = make_mocked_request("GET", "/daemon/v1/logs/x", app=app)

    async def cancelled(_: Any) -> Any:
        raise asyncio.CancelledError

    with caplog.at_level(logging.INFO, logger="herder"), pytest.raises(asyncio.CancelledError):
        await request_middleware(request, cancelled)
    lines = [r for r in caplog.records if getattr(r, "path", "") == "/daemon/v1/logs/x"]
    assert [getattr(r, "status", None) for r in lines] == [499]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_log_time_is_the_standard_format() -> None:
    plain, formatter = logging.Formatter("%(asctime)s"), JsonFormatter()
    for created in (1700000000.25, 1700000000.75, 1700000001.5, 1700000000.5):
        msecs = created % 1 * 1000
        record = logging.makeLogRecord({"msg": "x", "created": created, "msecs": msecs})
        assert formatter.formatTime(record) == plain.formatTime(record)
        assert json.loads(formatter.format(record))["time"] == plain.formatTime(record)
