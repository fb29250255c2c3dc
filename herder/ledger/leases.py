"""Leases: a named role (metering and reconciling a cluster's workloads)
held by one herder replica at a time, kept by renewing it before it expires.

`acquire` is one upsert: it takes a lease that is free or expired, renews
one the caller holds, and leaves one another live replica holds. Times are
the callers' clocks (epoch milliseconds): replicas' clocks must agree to
well within the lease's length (NTP).
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .models import Lease


class _Db(Protocol):
    def write(self) -> AbstractAsyncContextManager[AsyncConnection]: ...
    def read(self) -> AbstractAsyncContextManager[AsyncConnection]: ...
    def insert(self, model: Any) -> Any: ...


class Leases:
    """Mixed into `Ledger`."""

    async def acquire_lease(
        self: _Db, name: str, holder: str, ttl: float, *, now: float | None = None
    ) -> bool:
        """Take or renew the lease `name` for `ttl` seconds; True when `holder` has it now."""
        at = int((time.time() if now is None else now) * 1000)
        stmt = self.insert(Lease).values(name=name, holder=holder, expires_at=at + int(ttl * 1000))
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={"holder": stmt.excluded.holder, "expires_at": stmt.excluded.expires_at},
            where=or_(Lease.holder == stmt.excluded.holder, Lease.expires_at < at),
        ).returning(Lease.holder)
        async with self.write() as conn:
            got = (await conn.execute(stmt)).scalar_one_or_none()
        return got == holder

    async def release_lease(self: _Db, name: str, holder: str) -> None:
        """Give the lease up (at shutdown), so another replica takes it at once."""
        async with self.write() as conn:
            await conn.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))

    async def lease_holder(self: _Db, name: str, *, now: float | None = None) -> str | None:
        """Who holds `name` now (None: nobody, or it expired)."""
        at = int((time.time() if now is None else now) * 1000)
        async with self.read() as conn:
            row = (
                await conn.execute(
                    select(Lease.holder).where(Lease.name == name, Lease.expires_at >= at)
                )
            ).scalar_one_or_none()
        return None if row is None else str(row)
