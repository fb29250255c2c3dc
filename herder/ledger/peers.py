"""The peer registry: which replica of a cluster runs on which node and at
which URL the others reach it (`herder.peers` renews this replica's row).

Times are epoch milliseconds of the callers' clocks, as for leases.
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .models import Lease, Peer


class _Db(Protocol):
    def write(self) -> AbstractAsyncContextManager[AsyncConnection]: ...
    def read(self) -> AbstractAsyncContextManager[AsyncConnection]: ...
    def insert(self, model: Any) -> Any: ...


def _ms(now: float | None) -> int:
    return int((time.time() if now is None else now) * 1000)


class Peers:
    """Mixed into `Ledger`."""

    async def register_peer(
        self: _Db, replica: str, node: str, url: str, ttl: float, *, now: float | None = None
    ) -> None:
        """Record (or renew) `replica` on `node` at `url` for `ttl` seconds."""
        expires = _ms(now) + int(ttl * 1000)
        stmt = self.insert(Peer).values(replica=replica, node=node, url=url, expires_at=expires)
        stmt = stmt.on_conflict_do_update(
            index_elements=["replica"],
            set_={"node": node, "url": url, "expires_at": expires},
        )
        async with self.write() as conn:
            await conn.execute(stmt)

    async def forget_peer(self: _Db, replica: str) -> None:
        """Drop the row of a replica that stops (and rows long expired)."""
        async with self.write() as conn:
            await conn.execute(delete(Peer).where(Peer.replica == replica))
            await conn.execute(delete(Peer).where(Peer.expires_at < _ms(None) - 3_600_000))

    async def peer_on_node(
        self: _Db, node: str, *, other_than: str = "", now: float | None = None
    ) -> tuple[str, str] | None:
        """(replica, URL) of the live replica on `node` renewed last, or None."""
        stmt = (
            select(Peer.replica, Peer.url)
            .where(Peer.node == node, Peer.expires_at >= _ms(now), Peer.replica != other_than)
            .order_by(Peer.expires_at.desc())
            .limit(1)
        )
        async with self.read() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else (str(row[0]), str(row[1]))

    async def peer_url(self: _Db, replica: str, *, now: float | None = None) -> str | None:
        """The URL of `replica` while it is alive, else None."""
        stmt = select(Peer.url).where(Peer.replica == replica, Peer.expires_at >= _ms(now))
        async with self.read() as conn:
            url = (await conn.execute(stmt)).scalar_one_or_none()
        return None if url is None else str(url)

    async def live_leases(
        self: _Db, prefix: str, *, now: float | None = None
    ) -> list[tuple[str, str]]:
        """(name, holder) of every unexpired lease whose name starts with `prefix`."""
        stmt = select(Lease.name, Lease.holder).where(
            Lease.name.startswith(prefix, autoescape=True), Lease.expires_at >= _ms(now)
        )
        async with self.read() as conn:
            rows = (await conn.execute(stmt)).all()
        return [(str(name), str(holder)) for name, holder in rows]
