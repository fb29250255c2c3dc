"""Read-only lookups of running daemons in the workload registry.

Used by the proxy and attach routes to find where a daemon is and who owns
it: the registry row's endpoint (address and first port) and owner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from . import Ledger
from .models import Workload

DAEMON = "daemon"
_COLUMNS = (
    Workload.container_name,
    Workload.container_id,
    Workload.subject,
    Workload.name,
    Workload.address,
    Workload.ports,
)
RUNNING = "running"


@dataclass(frozen=True)
class RunningDaemon:
    """A daemon's registry row, as the proxy and attach routes need it."""

    container_name: str
    container_id: str
    subject: str
    name: str
    address: str
    first_port: int | None  # the daemon's first container port, None when it has none


async def find_running_daemon(
    ledger: Ledger, instance: str, container_name: str
) -> RunningDaemon | None:
    """The running daemon of this herder instance with this container name."""
    row = await ledger.running_workload(instance, DAEMON, container_name)
    return None if row is None else _daemon(row)


async def find_running_daemons_named(
    ledger: Ledger, instance: str, subject: str, name: str
) -> list[RunningDaemon]:
    """The subject's running daemons whose user-given name is `name`."""
    async with ledger.read() as conn:
        rows = (
            await conn.execute(
                select(*_COLUMNS).where(
                    Workload.instance == instance,
                    Workload.kind == DAEMON,
                    Workload.state == RUNNING,
                    Workload.subject == subject,
                    Workload.name == name,
                )
            )
        ).all()
    return [_daemon(row) for row in rows]


def _daemon(row: Any) -> RunningDaemon:
    return RunningDaemon(
        container_name=row.container_name,
        container_id=row.container_id or "",
        subject=row.subject,
        name=row.name,
        address=row.address,
        first_port=_first_port(row.ports),
    )


def _first_port(ports: str) -> int | None:
    """The first key of the registry's ports object (`{"80": 49153}` -> 80)."""
    try:
        value = json.loads(ports or "{}")
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    for key in value:
        try:
            port = int(key)
        except (TypeError, ValueError):
            return None
        return port if 0 < port < 65536 else None
    return None


# -- across herder instances (the Redis channels' routing) ---------------------


@dataclass(frozen=True)
class DaemonOwner:
    """Which herder instance a daemon's container name belongs to, and whose it is."""

    instance: str
    subject: str
    running: bool


async def daemon_owner(ledger: Ledger, container_name: str) -> DaemonOwner | None:
    """The instance that runs (or last ran) the daemon `container_name`, of
    any herder sharing this ledger: its open run first, else its latest run."""
    async with ledger.read() as conn:
        row = (
            await conn.execute(
                select(Workload.instance, Workload.subject, Workload.state)
                .where(Workload.kind == DAEMON, Workload.container_name == container_name)
                .order_by((Workload.state == RUNNING).desc(), Workload.id.desc())
                .limit(1)
            )
        ).first()
    if row is None:
        return None
    return DaemonOwner(instance=row.instance, subject=row.subject, running=row.state == RUNNING)


@dataclass(frozen=True)
class PlacedDaemon:
    """A running daemon of any herder instance, with what a spawn reply tells."""

    instance: str
    container_name: str
    address: str
    ports: dict[str, int]


async def running_daemons_started_since(
    ledger: Ledger, subject: str, name: str, since: int
) -> list[PlacedDaemon]:
    """The subject's running daemons named `name`, on any herder instance,
    started at or after `since` (epoch seconds), newest first."""
    async with ledger.read() as conn:
        rows = (
            await conn.execute(
                select(Workload.instance, *_COLUMNS)
                .where(
                    Workload.kind == DAEMON,
                    Workload.state == RUNNING,
                    Workload.subject == subject,
                    Workload.name == name,
                    Workload.started_at >= since,
                )
                .order_by(Workload.id.desc())
            )
        ).all()
    return [
        PlacedDaemon(
            instance=row.instance,
            container_name=row.container_name,
            address=row.address,
            ports=_ports(row.ports),
        )
        for row in rows
    ]


def _ports(ports: str) -> dict[str, int]:
    try:
        value = json.loads(ports or "{}")
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): int(v) for k, v in value.items() if isinstance(v, int)}
