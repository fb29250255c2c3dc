"""Credit holds and stream caps shared by every herder on one ledger
(`herder.holds`): in the database, a check-and-insert per subject, rows that
lapse when their replica stops renewing them. Two herder apps on one
PostgreSQL (as a cluster's replicas) cannot overspend a subject, nor pass its
stream cap, between them."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from herder.api import keys as appkeys
from herder.app import create_app
from herder.holds import SharedHolds
from herder.ledger import Hold, Ledger
from herder.settings import Settings
from herder.signing import INSTANCE_FILE, load_keypair
from herder.tokens import TokenService

from .channel_fixtures import share_keys
from .conftest import POSTGRES_URL, TokenMaker, auth, make_settings
from .script_image import ensure_script_image


def _subject() -> str:
    return f"holds-{secrets.token_hex(3)}@example.org"


async def test_racing_holds_on_two_ledgers_cover_the_balance_once(database_url: str) -> None:
    one, two = await Ledger.open(database_url), Ledger.open(database_url)
    other = await two
    try:
        subject = _subject()
        await one.grant_once(subject, "jti-1", 5)
        got = await asyncio.gather(
            *(
                (one if i % 2 else other).hold_credits(
                    subject, 30, instance="i", replica=f"r{i % 2}", ttl=60
                )
                for i in range(10)
            )
        )
        assert sum(h.id is not None for h in got) == 1
        refused = [h for h in got if h.id is None]
        assert {(h.remaining, h.held) for h in refused} == {(5, 30)}
        # Released, the subject may hold again; a subject without credits never.
        await one.release_hold(next(h.id for h in got if h.id is not None))
        assert (await other.hold_credits(subject, 30, instance="i", replica="r", ttl=60)).id
        broke = await one.hold_credits(_subject(), 1, instance="i", replica="r", ttl=60)
        assert (broke.id, broke.remaining) == (None, 0)
    finally:
        await one.close()
        await other.close()


async def test_a_replicas_holds_lapse_unless_renewed(ledger: Ledger) -> None:
    subject = _subject()
    await ledger.grant_once(subject, "jti-2", 5)
    hold = await ledger.hold_credits(subject, 30, instance="i", replica="dead", ttl=9, now=1000)
    kept = await ledger.hold_credits(subject, 30, instance="i", replica="live", ttl=9, now=1000)
    assert hold.id and kept.id is None  # the first covers the balance
    stream = await ledger.hold_stream(
        subject, instance="i", replica="dead", per_subject=1, total=9, ttl=9, now=1000
    )
    assert stream.id is not None
    full = await ledger.hold_stream(
        subject, instance="i", replica="live", per_subject=1, total=9, ttl=9, now=1008
    )
    assert (full.id, full.full) == (None, "subject")
    # "dead" renews nothing; a renewal by "live" drops the lapsed rows.
    await ledger.renew_holds("live", [], 9, now=1010)
    again = await ledger.hold_credits(subject, 30, instance="i", replica="live", ttl=9, now=1010)
    assert again.id is not None
    assert (
        await ledger.hold_stream(
            subject, instance="i", replica="live", per_subject=1, total=9, ttl=9, now=1010
        )
    ).id
    # A renewed hold keeps counting past its first expiry.
    await ledger.renew_holds("live", [again.id], 9, now=1018)
    late = await ledger.hold_credits(subject, 30, instance="i", replica="x", ttl=9, now=1025)
    assert late.id is None and late.held == 30


async def test_stream_caps_count_a_subject_and_the_instance(ledger: Ledger) -> None:
    first, second = _subject(), _subject()

    async def hold(subject: str, instance: str = "i", replica: str = "a") -> str | None:
        got = await ledger.hold_stream(
            subject, instance=instance, replica=replica, per_subject=2, total=3, ttl=60
        )
        return "ok" if got.id is not None else got.full

    assert [await hold(first, replica=r) for r in ("a", "b", "a")] == ["ok", "ok", "subject"]
    assert [await hold(second, replica=r) for r in ("b", "a")] == ["ok", "total"]
    assert await hold(second, instance="another") == "ok"  # another herder's own caps


# -- two herder apps on one PostgreSQL -----------------------------------------


@pytest.fixture
async def pair(
    tmp_path: Path, aiohttp_client: Callable[..., Any], request: pytest.FixtureRequest
) -> AsyncIterator[list[TestClient[Any, Any]]]:
    """Two herders as two replicas of one: one PostgreSQL, one key pair, one
    instance id, one engine; settings of the test's `indirect` parameters."""
    conn = await asyncpg.connect(POSTGRES_URL.replace("postgresql+asyncpg", "postgresql"))
    await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    await conn.close()
    overrides = {"database_url": POSTGRES_URL, **getattr(request, "param", {})}
    first = make_settings(tmp_path / "a", **overrides)
    share_keys(first.data_dir, tmp_path / "b")
    (tmp_path / "b" / INSTANCE_FILE).write_text((first.data_dir / INSTANCE_FILE).read_text())
    clients = [await aiohttp_client(create_app(first))]
    clients.append(await aiohttp_client(create_app(make_settings(tmp_path / "b", **overrides))))
    assert all(isinstance(c.server.app[appkeys.HOLDS], SharedHolds) for c in clients)
    yield clients
    app = clients[0].server.app
    runtime = app[appkeys.RUNTIME]
    for container in await runtime.list({"herder.instance": app[appkeys.INSTANCE]}):
        await runtime.remove(container.id)


def _tokens(settings: Settings) -> TokenMaker:
    def make(email: str, credits: int) -> str:
        service = TokenService(load_keypair(settings.data_dir), settings, ledger=None)  # type: ignore[arg-type]
        return service.create(email, credits, 1)[0]

    return make


@pytest.mark.docker
@pytest.mark.parametrize("pair", [{"minion_timeout": "2"}], indirect=True)
async def test_a_subject_cannot_overspend_across_two_herders(
    pair: list[TestClient[Any, Any]],
) -> None:
    token = _tokens(pair[0].server.app[appkeys.SETTINGS])(_subject(), 1)

    async def spawn(client: TestClient[Any, Any]) -> tuple[int, Any]:
        resp = await client.post(
            "/minion/v1/spawn",
            data={"env": "python", "main.sh": "sleep 1.2; echo ran"},
            headers=auth(token),
        )
        return resp.status, await resp.json()

    replies = await asyncio.gather(*(spawn(pair[i % 2]) for i in range(6)))
    assert sorted(s for s, _ in replies) == [200, 402, 402, 402, 402, 402], replies
    assert all("wait for them to finish" in b["error"] for s, b in replies if s == 402)
    # One run of 2 billed seconds: overdrawn by that one run, not one per herder.
    for client in pair:
        resp = await client.get("/token/v1/balance", headers=auth(token))
        assert (await resp.json())["credits"] == -1
    # Nothing is held once the runs are over.
    ledger = pair[0].server.app[appkeys.LEDGER]
    rich = _tokens(pair[0].server.app[appkeys.SETTINGS])(_subject(), 100)
    replies = await asyncio.gather(
        *(
            pair[i % 2].post(
                "/minion/v1/spawn", data={"env": "python", "main.sh": "true"}, headers=auth(rich)
            )
            for i in range(2)
        )
    )
    assert [r.status for r in replies] == [200, 200]
    async with ledger.read() as conn:
        left = (await conn.execute(select(func.count()).select_from(Hold))).scalar_one()
    assert left == 0


@pytest.mark.docker
@pytest.mark.parametrize("pair", [{"streams_per_subject": "1"}], indirect=True)
async def test_a_subjects_stream_cap_counts_across_two_herders(
    pair: list[TestClient[Any, Any]],
) -> None:
    one, two = pair
    token = _tokens(one.server.app[appkeys.SETTINGS])(_subject(), 1000)
    image = await ensure_script_image()
    resp = await one.post(
        "/daemon/v1/spawn",
        data={"name": "quiet", "image": image, "run.sh": "sleep 600"},
        headers=auth(token),
    )
    assert resp.status == 200, await resp.text()
    url = "/daemon/v1/logs/quiet?follow=1"
    held = await one.get(url, headers=auth(token))
    assert held.status == 200
    refused = await two.get(url, headers=auth(token))
    assert refused.status == 429 and "at most 1" in (await refused.json())["error"]
    # The first herder's follow ends: the second may follow.
    held.close()
    async with asyncio.timeout(10):
        while (again := await two.get(url, headers=auth(token))).status == 429:
            again.release()
            await asyncio.sleep(0.2)
    assert again.status == 200
    again.close()
