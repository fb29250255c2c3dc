"""Database engines: SQLite (WAL, busy timeout, foreign keys, BEGIN IMMEDIATE
for writes) or PostgreSQL through asyncpg."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 30_000


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engines(url: str) -> tuple[AsyncEngine, AsyncEngine]:
    """Return (write engine, read engine).

    On SQLite every transaction of the write engine starts with
    `BEGIN IMMEDIATE`: a deferred transaction that reads and then writes
    under WAL fails with SQLITE_BUSY instead of waiting for the lock. Reads
    go through a second engine with deferred transactions, which under WAL
    never block nor are blocked. On PostgreSQL both are the same engine.
    """
    if not is_sqlite(url):
        engine = create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
        return engine, engine
    write = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    read = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    _sqlite_pragmas(write, immediate=True)
    _sqlite_pragmas(read, immediate=False)
    return write, read


def _sqlite_pragmas(engine: AsyncEngine, *, immediate: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, start transactions.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # The metering tick touches every running workload each second: keep
        # them in the page cache, and its GROUP BY temp tables in memory.
        cursor.execute("PRAGMA cache_size=-65536")
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
