"""The ledger on SQLite and PostgreSQL: grants once under races, balances, revocations."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from herder.app import create_app
from herder.ledger import Ledger
from herder.ledger.migrate import SchemaBehind

from .conftest import auth, make_settings

pytestmark = pytest.mark.db


async def test_fifty_concurrent_first_uses_grant_once(
    database_url: str, tmp_path: Path, aiohttp_client: Any, make_token: Any
) -> None:
    settings = make_settings(tmp_path / "data", database_url=database_url)
    client = await aiohttp_client(create_app(settings))
    from herder.signing import load_keypair
    from herder.tokens import TokenService

    service = TokenService(load_keypair(settings.data_dir), settings, ledger=None)  # type: ignore[arg-type]
    token, claims = service.create("race@example.org", 500, 1)
    responses = await asyncio.gather(
        *(client.get("/token/v1/balance", headers=auth(token)) for _ in range(50))
    )
    assert [r.status for r in responses] == [200] * 50
    ledger = await Ledger.open(database_url)
    try:
        balance = await ledger.balance("race@example.org")
        assert balance.granted == 500 and balance.remaining == 500
        assert await ledger.audit("race@example.org") == balance
        assert await ledger.grant_of(claims.jti) == 500
    finally:
        await ledger.close()


async def test_grant_once_directly_under_race(ledger: Ledger) -> None:
    results = await asyncio.gather(
        *(Ledger.grant_once(ledger, "r@x", "jti-1", 30) for _ in range(50))
    )
    assert results.count(True) == 1
    assert (await ledger.balance("r@x")).remaining == 30


async def test_balance_is_grants_minus_charges(ledger: Ledger) -> None:
    await ledger.grant_once("b@x", "t1", 100)
    await ledger.grant_once("b@x", "t2", 50)
    assert await ledger.charge("b@x", "t1", "minion", "python", 3, 3) == 147
    assert await ledger.charge("b@x", "t2", "daemon", "web", 10, 20) == 127
    balance = await ledger.balance("b@x")
    assert (balance.granted, balance.charged, balance.remaining) == (150, 23, 127)
    assert await ledger.audit("b@x") == balance
    assert (await ledger.balance("nobody@x")).remaining == 0


async def test_revocations(ledger: Ledger) -> None:
    assert not await ledger.is_revoked("j")
    assert await ledger.revoke("j") is True
    assert await ledger.revoke("j") is False
    assert await ledger.is_revoked("j")


async def test_schema_behind_is_refused(database_url: str) -> None:
    with pytest.raises(SchemaBehind, match="herder db upgrade"):
        await Ledger.open(database_url, upgrade=False)
    ledger = await Ledger.open(database_url)  # upgrades
    await ledger.close()
    ledger = await Ledger.open(database_url, upgrade=False)  # now current
    await ledger.close()


async def test_sqlite_pragmas(tmp_path: Path) -> None:
    from sqlalchemy import text

    ledger = await Ledger.open(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    try:
        async with ledger.write() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() >= 1000
    finally:
        await ledger.close()
