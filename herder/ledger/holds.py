"""Holds: what minion runs in flight may cost and which streams are open,
as rows every herder replica sharing the database counts (`holds`).

A hold is taken in one transaction that checks the limit and inserts the
row, serialised with every other taker of the same limit: on PostgreSQL a
credit hold locks its subject's account row, a stream hold takes a
transaction-scoped advisory lock of its instance; on SQLite `BEGIN
IMMEDIATE` serialises every writer anyway. Its replica renews it while it
lives (`renew_holds`); a row past `expires_at` (epoch milliseconds) no
longer counts, so the holds of a replica that died lapse on their own.
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .models import Account, Hold
from .registry import accrual

CREDITS = "credits"
STREAM = "stream"


@dataclass(frozen=True)
class CreditHold:
    """A credit hold asked for: `id` None when it was refused."""

    id: int | None
    remaining: int  # the subject's balance when asked
    held: int  # what the subject's other runs in flight held then


@dataclass(frozen=True)
class StreamHold:
    """A stream hold asked for: `id` None when refused, `full` naming the
    limit reached ('subject' or 'total')."""

    id: int | None
    full: str | None = None


class _Db(Protocol):
    @property
    def dialect(self) -> str: ...
    def write(self) -> AbstractAsyncContextManager[AsyncConnection]: ...


def _ms(now: float | None) -> int:
    return int((time.time() if now is None else now) * 1000)


def _live(kind: str, at: int) -> Any:
    return (Hold.kind == kind) & (Hold.expires_at >= at)


class HoldRows:
    """Mixed into `Ledger`."""

    async def hold_credits(
        self: _Db,
        subject: str,
        credits: int,
        *,
        instance: str,
        replica: str,
        ttl: float,
        now: float | None = None,
    ) -> CreditHold:
        """Hold `credits` for `subject` unless its balance is used up, or
        covers no more than what its runs in flight hold already."""
        at = _ms(now)
        async with self.write() as conn:
            if self.dialect == "postgresql":
                await conn.execute(
                    select(Account.subject).where(Account.subject == subject).with_for_update()
                )
            remaining = (
                await conn.execute(
                    select(Account.granted - Account.charged - accrual(Account.subject)).where(
                        Account.subject == subject
                    )
                )
            ).scalar_one_or_none() or 0
            held = (
                await conn.execute(
                    select(func.coalesce(func.sum(Hold.credits), 0)).where(
                        _live(CREDITS, at), Hold.subject == subject
                    )
                )
            ).scalar_one()
            remaining, held = int(remaining), int(held)
            if remaining <= 0 or (held and remaining - held <= 0):
                return CreditHold(None, remaining, held)
            hold_id = await _insert(conn, CREDITS, instance, subject, credits, replica, at, ttl)
        return CreditHold(hold_id, remaining, held)

    async def hold_stream(
        self: _Db,
        subject: str,
        *,
        instance: str,
        replica: str,
        per_subject: int,
        total: int,
        ttl: float,
        now: float | None = None,
    ) -> StreamHold:
        """Hold one stream of `subject` on `instance`, unless the subject has
        `per_subject` open there or the instance `total`."""
        at = _ms(now)
        async with self.write() as conn:
            if self.dialect == "postgresql":
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                    {"key": f"herder.streams:{instance}"},
                )
            live = _live(STREAM, at) & (Hold.instance == instance)
            mine, everyone = (
                await conn.execute(
                    select(
                        func.count().filter(Hold.subject == subject),
                        func.count(),
                    ).where(live)
                )
            ).one()
            if int(mine) >= per_subject:
                return StreamHold(None, "subject")
            if int(everyone) >= total:
                return StreamHold(None, "total")
            hold_id = await _insert(conn, STREAM, instance, subject, 0, replica, at, ttl)
        return StreamHold(hold_id)

    async def release_hold(self: _Db, hold_id: int) -> None:
        async with self.write() as conn:
            await conn.execute(delete(Hold).where(Hold.id == hold_id))

    async def renew_holds(
        self: _Db, replica: str, ids: list[int], ttl: float, *, now: float | None = None
    ) -> None:
        """Keep `replica`'s holds `ids` for another `ttl` seconds, and drop
        every hold that expired (a dead replica's)."""
        at = _ms(now)
        async with self.write() as conn:
            for start in range(0, len(ids), 500):
                await conn.execute(
                    update(Hold)
                    .where(Hold.replica == replica, Hold.id.in_(ids[start : start + 500]))
                    .values(expires_at=at + int(ttl * 1000))
                )
            await conn.execute(delete(Hold).where(Hold.expires_at < at))

    async def release_replica_holds(self: _Db, replica: str) -> None:
        """Every hold of `replica` (it shuts down)."""
        async with self.write() as conn:
            await conn.execute(delete(Hold).where(Hold.replica == replica))


async def _insert(
    conn: AsyncConnection,
    kind: str,
    instance: str,
    subject: str,
    credits: int,
    replica: str,
    at: int,
    ttl: float,
) -> int:
    inserted = await conn.execute(
        insert(Hold)
        .values(
            kind=kind,
            instance=instance,
            subject=subject,
            credits=credits,
            replica=replica,
            expires_at=at + int(ttl * 1000),
        )
        .returning(Hold.id)
    )
    return int(inserted.scalar_one())
