"""The `herder` command: settings errors, keys, tokens, against a served herder."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from herder.app import create_app

from .conftest import auth, make_settings

ROOT = Path(__file__).resolve().parent.parent
HERDER = [sys.executable, "-m", "herder"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HERDER_")}
    full_env.update(env or {})
    return subprocess.run(
        [*HERDER, *args], capture_output=True, text=True, env=full_env, timeout=60, cwd=ROOT
    )


@pytest.mark.parametrize(
    "args, env, names",
    [
        (["serve", "--port", "eighty"], {}, "--port"),
        (["serve", "--port", "70000"], {}, "--port"),
        (["serve"], {"HERDER_MINION_TIMEOUT": "soon"}, "HERDER_MINION_TIMEOUT"),
        (["serve"], {"HERDER_CREDIT_RATE": "-1"}, "HERDER_CREDIT_RATE"),
        (["serve"], {"HERDER_DATA_DIR": "/proc/no/such/dir"}, "HERDER_DATA_DIR"),
        (["serve"], {"HERDER_DATABASE_URL": "not a url at all"}, "HERDER_DATABASE_URL"),
        (["serve"], {"HERDER_DATABASE_URL": "mysql://x@y/z"}, "HERDER_DATABASE_URL"),
        (["serve"], {"HERDER_MINION_NETWORK": "maybe"}, "HERDER_MINION_NETWORK"),
        (["serve"], {"HERDER_NETWORK": "bridge"}, "HERDER_NETWORK"),
        (["serve"], {"HERDER_NETWORK": "host"}, "HERDER_NETWORK"),
        (["serve"], {"HERDER_NETWORK": "no/slash"}, "HERDER_NETWORK"),
        (["serve"], {"HERDER_IMAGES": "python"}, "HERDER_IMAGES"),
        (["serve"], {"HERDER_GOLEM_MEMORY_MB": "lots"}, "HERDER_GOLEM_MEMORY_MB"),
        (["serve"], {"HERDER_GOLEM_PIDS": "3"}, "HERDER_GOLEM_PIDS"),
        (["serve"], {"HERDER_DAEMON_CAPABILITIES": "CHOWN,NOPE"}, "HERDER_DAEMON_CAPABILITIES"),
        (["serve"], {"HERDER_GOLEM_OPEN_CONTROL": "perhaps"}, "HERDER_GOLEM_OPEN_CONTROL"),
        (["serve"], {"HERDER_PROXY_DOMAIN": "http://apps.example"}, "HERDER_PROXY_DOMAIN"),
        (["serve"], {"HERDER_PROXY_DOMAIN": "*.apps.example"}, "HERDER_PROXY_DOMAIN"),
        (["serve"], {"HERDER_HEADER_TIMEOUT": "0"}, "HERDER_HEADER_TIMEOUT"),
        (["serve"], {"HERDER_BODY_MIN_RATE": "fast"}, "HERDER_BODY_MIN_RATE"),
        (["serve"], {"HERDER_CONNECTIONS_PER_CLIENT": "-1"}, "HERDER_CONNECTIONS_PER_CLIENT"),
        (["serve"], {"HERDER_UVLOOP": "sometimes"}, "HERDER_UVLOOP"),
        (["token", "create", "-e", "a@b.c"], {"HERDER_PUBLIC_URL": "ftp://x"}, "HERDER_PUBLIC_URL"),
    ],
)
def test_bad_settings_exit_2_with_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], names: str
) -> None:
    env = {"HERDER_DATA_DIR": str(tmp_path / "d"), **env}
    result = run(*args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert names in lines[0]
    assert "Traceback" not in result.stderr


def test_serve_runs_on_uvloop_unless_turned_off(tmp_path: Path) -> None:
    import asyncio

    import uvloop

    from herder.cli.serve import event_loop

    for uvloop_on, kind in ((True, uvloop.Loop), (False, asyncio.BaseEventLoop)):
        loop = event_loop(make_settings(tmp_path / "d", uvloop=uvloop_on))
        try:
            assert isinstance(loop, kind) and isinstance(loop, uvloop.Loop) == uvloop_on
        finally:
            loop.close()


def test_secret_settings_hidden_in_repr(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", token_password="hunter2")
    assert "hunter2" not in repr(settings)


def test_keys_generate(tmp_path: Path) -> None:
    env = {"HERDER_DATA_DIR": str(tmp_path / "d")}
    first = run("keys", "generate", env=env)
    assert first.returncode == 0, first.stderr
    key = tmp_path / "d" / "herder-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = key.read_bytes()
    again = run("keys", "generate", env=env)
    assert again.returncode == 1 and "--force" in again.stderr
    assert key.read_bytes() == before
    forced = run("keys", "generate", "--force", env=env)
    assert forced.returncode == 0
    assert key.read_bytes() != before
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


async def test_token_round_trip_against_served_herder(tmp_path: Path, aiohttp_client: Any) -> None:
    data = tmp_path / "d"
    settings = make_settings(data)
    env = {"HERDER_DATA_DIR": str(data)}
    assert run("keys", "generate", env=env).returncode == 0
    created = run(
        "token", "create", "-e", "cli@example.org", "-c", "321", "--ttl-days", "2", env=env
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert token.count(".") == 2
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/token/v1/balance", headers=auth(token))
    assert resp.status == 200
    assert (await resp.json())["credits"] == 321

    # The served app shares this event loop: run the CLI in a thread so the
    # app keeps running (a blocked loop could hold a SQLite write lock).
    inspected = await asyncio.to_thread(run, "token", "inspect", token, env=env)
    assert inspected.returncode == 0
    assert "cli@example.org" in inspected.stdout and "321" in inspected.stdout
    jti = next(
        line.split()[-1] for line in inspected.stdout.splitlines() if line.startswith("jti:")
    )

    revoked = await asyncio.to_thread(run, "token", "revoke", jti, env=env)
    assert revoked.returncode == 0
    resp = await client.get("/token/v1/balance", headers=auth(token))
    assert resp.status == 401
    after = await asyncio.to_thread(run, "token", "inspect", token, env=env)
    assert "revoked:   yes" in after.stdout


def test_revoke_takes_a_jti_or_a_whole_token_and_nothing_else(tmp_path: Path) -> None:
    env = {"HERDER_DATA_DIR": str(tmp_path / "d")}
    token = run("token", "create", "-e", "r@example.org", env=env).stdout.splitlines()[-1]
    foreign = run(
        "token", "create", "-e", "r@example.org", env={"HERDER_DATA_DIR": str(tmp_path / "o")}
    ).stdout.splitlines()[-1]
    for bad in ("", "two words", "x" * 129, foreign, "a.b.c"):
        result = run("token", "revoke", bad, env=env)
        assert result.returncode == 2, bad
        assert "cannot revoke" in result.stderr and "Traceback" not in result.stderr
    assert "revoked:   no" in run("token", "inspect", token, env=env).stdout
    revoked = run("token", "revoke", token, env=env)
    assert revoked.returncode == 0 and revoked.stdout.startswith("revoked ")
    assert token not in revoked.stdout  # its jti, not the token
    assert "revoked:   yes" in run("token", "inspect", token, env=env).stdout


def test_inspect_rejects_foreign_token(tmp_path: Path) -> None:
    mine = {"HERDER_DATA_DIR": str(tmp_path / "a")}
    theirs = {"HERDER_DATA_DIR": str(tmp_path / "b")}
    token = run("token", "create", "-e", "x@y.z", env=theirs).stdout.strip().splitlines()[-1]
    result = run("token", "inspect", token, env=mine)
    assert result.returncode == 1
    assert "invalid token" in result.stderr


def test_db_upgrade(tmp_path: Path) -> None:
    env = {"HERDER_DATA_DIR": str(tmp_path / "d")}
    result = run("db", "upgrade", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "d" / "herder.db").exists()


def test_serve_refuses_database_from_the_future(tmp_path: Path) -> None:
    import sqlite3

    env = {"HERDER_DATA_DIR": str(tmp_path / "d"), "HERDER_PORT": "0"}
    assert run("db", "upgrade", env=env).returncode == 0
    with sqlite3.connect(tmp_path / "d" / "herder.db") as db:
        db.execute("UPDATE alembic_version SET version_num = 'ffff'")
    result = run("serve", env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "ffff" in result.stderr
