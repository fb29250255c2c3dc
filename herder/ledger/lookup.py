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
