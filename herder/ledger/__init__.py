"""The ledger: grants, charges, revocations, balances and the workload registry.

Every database access of the herder goes through `Ledger`. A subject's
balance is `accounts.granted - accounts.charged` minus what its running runs
have accrued since their charge rows were written (see `registry`); both
columns move in the same transaction as the grant or charge rows they sum,
so the balance always equals grants minus charges.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from alembic.util import CommandError
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from . import migrate
from .engine import make_engines
from .holds import CreditHold, HoldRows, StreamHold
from .leases import Leases
from .models import Account, Charge, Grant, Hold, MeterPosition, Revocation, Workload
from .peers import Peers
from .registry import TickResult, WorkloadRegistry, accrual

__all__ = [
    "Ledger",
    "Balance",
    "Usage",
    "Account",
    "Charge",
    "CreditHold",
    "Grant",
    "Hold",
    "MeterPosition",
    "Revocation",
    "StreamHold",
    "TickResult",
    "Workload",
]


@dataclass(frozen=True)
class Balance:
    subject: str
    granted: int
    charged: int

    @property
    def remaining(self) -> int:
        return self.granted - self.charged


@dataclass(frozen=True)
class Usage:
    """What the credit meter shows of one subject."""

    balance: Balance
    running: list[Workload]
    charges: list[Charge]


class Ledger(WorkloadRegistry, Leases, HoldRows, Peers):
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine, self.read_engine = make_engines(url)
        self._granted_jtis: set[str] = set()

    @classmethod
    async def open(cls, url: str, *, upgrade: bool = True) -> Ledger:
        """Open the database; bring the schema to head (or refuse when not `upgrade`)."""
        if upgrade:
            try:
                await asyncio.to_thread(migrate.upgrade, url)
            except CommandError as exc:
                raise migrate.SchemaBehind(
                    f"cannot bring the database schema to this herder's revision: {exc}"
                ) from None
        ledger = cls(url)
        try:
            await migrate.check_current(ledger.engine)
        except BaseException:
            await ledger.close()
            raise
        return ledger

    async def close(self) -> None:
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def insert(self, model: Any) -> Any:
        """A dialect insert with ON CONFLICT support."""
        if self.dialect == "postgresql":
            return postgresql.insert(model)
        return sqlite.insert(model)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A read-then-write transaction (BEGIN IMMEDIATE on SQLite)."""
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.read_engine.connect() as conn:
            yield conn

    async def ping(self) -> None:
        """Raise unless the database answers now (called by /healthz).

        On SQLite a pooled connection keeps a moved, deleted or replaced
        file open and would still answer, so the file itself is opened
        afresh (read-only) and its schema read.
        """
        if self.dialect == "sqlite":
            await asyncio.to_thread(_probe_sqlite_file, self.engine.url.database)
        async with self.read() as conn:
            await conn.execute(text("SELECT 1"))

    # -- grants and balances -------------------------------------------------

    async def grant_once(self, subject: str, jti: str, credits: int) -> bool:
        """Grant a token's credits to its subject unless this `jti` was granted.

        Safe under any number of concurrent first uses: the unique `jti`
        with ON CONFLICT DO NOTHING decides, and the account moves only when
        this transaction inserted the grant.
        """
        if jti in self._granted_jtis:
            return False
        async with self.write() as conn:
            inserted = (
                await conn.execute(
                    self.insert(Grant)
                    .values(jti=jti, subject=subject, credits=credits)
                    .on_conflict_do_nothing(index_elements=["jti"])
                    .returning(Grant.id)
                )
            ).scalar_one_or_none()
            if inserted is not None:
                await self._move_account(conn, subject, granted=credits)
        self._granted_jtis.add(jti)
        return inserted is not None

    async def _move_account(
        self, conn: AsyncConnection, subject: str, *, granted: int = 0, charged: int = 0
    ) -> None:
        stmt = self.insert(Account).values(subject=subject, granted=granted, charged=charged)
        stmt = stmt.on_conflict_do_update(
            index_elements=["subject"],
            set_={
                "granted": Account.granted + stmt.excluded.granted,
                "charged": Account.charged + stmt.excluded.charged,
            },
        )
        await conn.execute(stmt)

    async def charge(
        self, subject: str, jti: str, kind: str, workload: str, seconds: int, credits: int
    ) -> int:
        """Record one charge; return the subject's remaining balance."""
        async with self.write() as conn:
            await conn.execute(
                insert(Charge).values(
                    subject=subject,
                    jti=jti,
                    kind=kind,
                    workload=workload,
                    seconds=seconds,
                    credits=credits,
                )
            )
            await self._move_account(conn, subject, charged=credits)
            # Less left than its `check_at` assumed: the next tick looks at it.
            await conn.execute(
                update(Account)
                .where(Account.subject == subject, Account.check_at > 0)
                .values(check_at=0)
            )
            return await self._remaining(conn, subject)

    @staticmethod
    async def _remaining(conn: AsyncConnection, subject: str) -> int:
        row = (
            await conn.execute(
                select(Account.granted - Account.charged - accrual(Account.subject)).where(
                    Account.subject == subject
                )
            )
        ).scalar_one_or_none()
        return int(row or 0)

    async def balance(self, subject: str) -> Balance:
        async with self.read() as conn:
            return await _balance(conn, subject)

    async def audit(self, subject: str) -> Balance:
        """The balance recomputed from the grant and charge rows themselves."""
        async with self.read() as conn:
            granted = (
                await conn.execute(
                    select(func.coalesce(func.sum(Grant.credits), 0)).where(
                        Grant.subject == subject
                    )
                )
            ).scalar_one()
            charged = (
                await conn.execute(
                    select(func.coalesce(func.sum(Charge.credits), 0)).where(
                        Charge.subject == subject
                    )
                )
            ).scalar_one()
            charged += (await conn.execute(select(accrual(subject)))).scalar_one()
        return Balance(subject, int(granted), int(charged))

    async def total_charged(self) -> int:
        """Credits charged to all subjects so far (for /metrics)."""
        async with self.read() as conn:
            total = (
                await conn.execute(select(func.coalesce(func.sum(Account.charged), 0) + accrual()))
            ).scalar_one()
        return int(total)

    async def grant_of(self, jti: str) -> int | None:
        async with self.read() as conn:
            value = (
                await conn.execute(select(Grant.credits).where(Grant.jti == jti))
            ).scalar_one_or_none()
        return None if value is None else int(value)

    async def usage(self, subject: str, limit: int) -> Usage:
        """The subject's balance, open metered runs (on every instance sharing
        this ledger) and last `limit` charge rows, newest first (a running
        workload's row grows with every metering tick: its accrual is added)."""
        async with self.read() as conn:
            balance = await _balance(conn, subject)
            running = (
                await conn.execute(
                    select(Workload.__table__)
                    .where(
                        Workload.subject == subject,
                        Workload.state == "running",
                        Workload.metered.is_(True),
                    )
                    .order_by(Workload.id)
                )
            ).all()
            charges = (
                await conn.execute(
                    select(Charge.__table__)
                    .where(Charge.subject == subject)
                    .order_by(Charge.id.desc())
                    .limit(limit)
                )
            ).all()
            accrued = await self._accrued_charges(conn, [row.id for row in charges])
        return Usage(
            balance,
            [Workload(**row._mapping) for row in running],
            [_with_accrual(Charge(**row._mapping), accrued) for row in charges],
        )

    # -- revocations ---------------------------------------------------------

    async def revoke(self, jti: str) -> bool:
        """Revoke a `jti`; return False when it already was."""
        async with self.write() as conn:
            inserted = (
                await conn.execute(
                    self.insert(Revocation)
                    .values(jti=jti)
                    .on_conflict_do_nothing(index_elements=["jti"])
                    .returning(Revocation.jti)
                )
            ).scalar_one_or_none()
        return inserted is not None

    async def is_revoked(self, jti: str) -> bool:
        async with self.read() as conn:
            found = (
                await conn.execute(select(Revocation.jti).where(Revocation.jti == jti))
            ).scalar_one_or_none()
        return found is not None


def _with_accrual(charge: Charge, accrued: dict[int, tuple[int, int]]) -> Charge:
    seconds, credits = accrued.get(charge.id, (0, 0))
    charge.seconds += seconds
    charge.credits += credits
    return charge


def _probe_sqlite_file(path: str | None) -> None:
    if not path or path == ":memory:":
        return
    uri = f"file:{urllib.parse.quote(path)}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=2)) as db:
        db.execute("SELECT version_num FROM alembic_version").fetchall()


async def _balance(conn: AsyncConnection, subject: str) -> Balance:
    """The subject's balance: granted, and charged with what its running
    workloads have accrued since their last charge row (0, 0 when unknown)."""
    row = (
        await conn.execute(
            select(
                Account.granted,
                (Account.charged + accrual(Account.subject)).label("charged"),
            ).where(Account.subject == subject)
        )
    ).one_or_none()
    if row is None:
        return Balance(subject, 0, 0)
    return Balance(subject, int(row.granted), int(row.charged))
