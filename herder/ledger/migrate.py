"""Alembic glue: upgrade to head, and tell whether a database is current."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from herder.bundled import migrations_dir


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def upgrade(url: str) -> None:
    """Blocking: run in a thread (env.py runs its own event loop)."""
    command.upgrade(alembic_config(url), "head")


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)


class SchemaBehind(Exception):
    pass


async def check_current(engine: AsyncEngine) -> None:
    """Raise `SchemaBehind` unless the database is at the code's head revision."""
    head = head_revision()
    current = await current_revision(engine)
    if current != head:
        raise SchemaBehind(
            f"database schema is at {current or 'nothing'}, the code needs {head}; "
            "run `herder db upgrade`"
        )
