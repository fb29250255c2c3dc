"""Shared fixtures: real settings in a temp data dir, the real app, tokens,
a real Docker Engine, SQLite and PostgreSQL URLs, and a sweep of every
container, volume and network the session's herders created."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseRunner, TestClient, TestServer

from herder import serving
from herder.app import create_app, proxy_front
from herder.ledger import Ledger
from herder.settings import Settings
from herder.signing import INSTANCE_FILE, load_keypair
from herder.tokens import TokenService

from .channel_fixtures import prefix, redis  # noqa: F401  (fixtures: the channels' Redis)
from .cluster_lab import lab  # noqa: F401  (a session fixture: the Swarm lab, for `cluster` tests)
from .daemon_fixtures import daemons  # noqa: F401  (a fixture: running daemons for tests)

SESSION = secrets.token_hex(4)
INSTANCE_PREFIX = f"test-{SESSION}-"
_counter = itertools.count()
POSTGRES_URL = os.environ.get(
    "HERDER_TEST_POSTGRES_URL", "postgresql+asyncpg://herder:herder@127.0.0.1:5432/herder_test"
)
# Test modules whose tests run once on each event loop (see the hook below).
UVLOOP_MODULES = frozenset({"test_proxy", "test_upstream", "test_front"})


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    """The proxy's tests run on both event loops `herder serve` may use:
    uvloop (its default) and asyncio's (`HERDER_UVLOOP=false`); the others
    on asyncio's."""
    module = getattr(item, "module", None)
    if module is None or module.__name__.rsplit(".", 1)[-1] not in UVLOOP_MODULES:
        return {"asyncio": asyncio.new_event_loop}
    import uvloop

    return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test herder whose instance id the session sweep knows."""
    data_dir.mkdir(parents=True, exist_ok=True)
    instance = data_dir / INSTANCE_FILE
    if not instance.exists():
        instance.write_text(f"{INSTANCE_PREFIX}{next(_counter)}\n")
    flags: dict[str, Any] = {"data_dir": str(data_dir), "credit_rate": "1"}
    flags.update({k: str(v) if not isinstance(v, str) else v for k, v in overrides.items()})
    return Settings.load(flags, environ={})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
async def client(
    settings: Settings, aiohttp_client: Callable[..., Any]
) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(settings)
    yield await aiohttp_client(app)


class ServedTestServer(TestServer):
    """The app behind the server `herder serve` runs: its guards and the
    proxy's front door (`herder.serving`), its keep-alive timeout, no
    handler cancellation."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        super().__init__(app)
        self.guards = serving.Guards.from_settings(settings, open_files=4096)

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs.pop("handler_cancellation", None)
        return serving.GuardedRunner(
            self.app,
            self.guards,
            proxy_front(self.app),
            access_log=None,
            keepalive_timeout=serving.KEEPALIVE_TIMEOUT,
            **kwargs,
        )


@pytest.fixture
async def served_client(
    settings: Settings, aiohttp_client: Callable[..., Any]
) -> AsyncIterator[TestClient[Any, Any]]:
    """`client`, through the server `herder serve` runs (`ServedTestServer`)."""
    app = create_app(settings)
    yield await aiohttp_client(ServedTestServer(app, settings))


TokenMaker = Callable[..., str]


@pytest.fixture
def make_token(settings: Settings) -> TokenMaker:
    """Sign tokens with the test herder's own key (as `herder token create` does)."""

    def make(email: str | None = None, credits: int = 1000, ttl_days: float = 1) -> str:
        keys = load_keypair(settings.data_dir)
        service = TokenService(keys, settings, ledger=None)  # type: ignore[arg-type]
        token, _ = service.create(
            email or f"user-{secrets.token_hex(3)}@example.org", credits, ttl_days
        )
        return token

    return make


@pytest.fixture
def token(make_token: TokenMaker) -> str:
    return make_token()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def docker() -> AsyncIterator[aiodocker.Docker]:
    """The real Docker Engine. Fails (never skips) when there is none."""
    client = aiodocker.Docker()
    try:
        await client.version()
    except Exception as exc:  # pragma: no cover - the failure is the message
        await client.close()
        pytest.fail(f"no Docker Engine answers ({exc}); run scripts/ensure-docker")
    yield client
    await client.close()


async def eventually(check: Any, timeout: float = 10.0, what: str | None = None) -> None:
    """Wait until `await check()` is true; fail (with `what`) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(what or f"{check.__name__} did not happen within {timeout} s")
        await asyncio.sleep(0.1)


def docker_ps(*filters: str) -> list[dict[str, Any]]:
    args = ["docker", "ps", "-a", "--format", "{{json .}}"]
    for f in filters:
        args += ["--filter", f]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def session_containers(*labels: str) -> list[str]:
    """Ids of containers made by this session's test herders (and carrying
    every `key=value` of `labels`)."""
    filters = [
        arg for label in ("herder.managed=1", *labels) for arg in ("--filter", f"label={label}")
    ]
    out = subprocess.run(
        # not -q: Docker ignores --format with it
        ["docker", "ps", "-a", "--no-trunc", *filters,
         "--format", '{{.ID}} {{.Label "herder.instance"}}'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout  # fmt: skip
    return [
        line.split()[0]
        for line in out.splitlines()
        if len(line.split()) == 2 and line.split()[1].startswith(INSTANCE_PREFIX)
    ]


@pytest.fixture(scope="session", autouse=True)
def sweep_containers() -> Iterator[None]:
    yield
    left = session_containers()
    if left:
        subprocess.run(["docker", "rm", "-f", "-v", *left], capture_output=True, check=False)
    # Daemon data volumes outlive their containers by design (kill keeps them).
    volumes = subprocess.run(
        [
            "docker",
            "volume",
            "ls",
            "--filter",
            "label=herder.managed=1",
            "--format",
            '{{.Name}} {{.Label "herder.instance"}}',
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")
    mine = [
        v.split()[0]
        for v in volumes
        if len(v.split()) == 2 and v.split()[1].startswith(INSTANCE_PREFIX)
    ]
    if mine:
        subprocess.run(["docker", "volume", "rm", "-f", *mine], capture_output=True, check=False)
    # Networks a test made for itself are named after the session; the shared
    # herder network (`network`, default `herder`) stays for the next run.
    networks = subprocess.run(
        ["docker", "network", "ls", "-q", "--filter", f"name={INSTANCE_PREFIX}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if networks:
        subprocess.run(["docker", "network", "rm", *networks], capture_output=True, check=False)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database: a SQLite file, or a clean PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        return
    import asyncpg

    dsn = POSTGRES_URL.replace("postgresql+asyncpg", "postgresql")
    try:
        conn = await asyncpg.connect(dsn)
    except Exception as exc:
        pytest.fail(f"no PostgreSQL at {dsn} ({exc}); run scripts/ensure-postgres")
    await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    await conn.close()
    yield POSTGRES_URL


@pytest.fixture
async def ledger(database_url: str) -> AsyncIterator[Ledger]:
    ledger = await Ledger.open(database_url)
    yield ledger
    await ledger.close()
