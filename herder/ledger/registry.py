"""The workload registry and metering: the SQL behind daemons (and golems).

A running workload is one `workloads` row (state 'running') plus one open
`charges` row (`workloads.charge_id`) that accumulates the seconds and
credits of that run. Each metering tick moves, in one transaction and with a
fixed number of set-based statements whatever the number of workloads:

- every open charge row by the seconds since its run was last metered,
- every subject's `accounts.charged` by the sum of its runs' seconds,
- the instance's meter position (`meter_positions.metered_until`) to the tick's time.

A running run has been charged up to `max(workloads.metered_until,
meter_positions.metered_until)`: its own start until the first tick, the
instance's position after that (ticks do not rewrite every workload row,
which at 10,000 workloads would be most of a tick's cost); closing a run
writes its final position into `workloads.metered_until`.

So a subject's balance (`granted - charged`) always equals its grants minus
its charges, a tick that comes late charges the seconds it missed, and a
tick that is repeated charges nothing (the seconds are already behind
`metered_until`). A run that ends is charged up to its end and closed.

On PostgreSQL, writers of the registry serialise on a table lock (plain
reads are not blocked); on SQLite `BEGIN IMMEDIATE` already does that.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, case, func, insert, literal, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .models import Account, Charge, MeterPosition, Workload

RUNNING = "running"
STOPPED = "stopped"


@dataclass(frozen=True)
class TickResult:
    """What one metering tick did."""

    workloads: int  # workloads charged
    exhausted: list[Workload]  # running metered workloads whose subject is at or below zero


def _metered_until(position: int) -> ColumnElement[int]:
    """A running run is charged up to the later of its own `metered_until`
    and its instance's meter position."""
    return case(
        (Workload.metered_until > position, Workload.metered_until), else_=literal(position)
    )


def _workload(row: Any) -> Workload:
    return Workload(**dict(row._mapping))


def ports_json(ports: dict[str, int]) -> str:
    """The registry's `ports` column: a JSON object in the requested order."""
    return json.dumps(ports, separators=(",", ":"))


class WorkloadRegistry:
    """Registry methods of `Ledger` (mixed in; see `herder.ledger.Ledger`)."""

    if TYPE_CHECKING:

        @property
        def dialect(self) -> str: ...

        def write(self) -> AbstractAsyncContextManager[AsyncConnection]: ...
        def read(self) -> AbstractAsyncContextManager[AsyncConnection]: ...
        def insert(self, model: Any) -> Any: ...
        async def _move_account(
            self, conn: AsyncConnection, subject: str, *, granted: int = 0, charged: int = 0
        ) -> None: ...

    async def _lock_registry(self, conn: AsyncConnection) -> None:
        if self.dialect == "postgresql":
            await conn.execute(text("LOCK TABLE workloads IN SHARE ROW EXCLUSIVE MODE"))

    async def _position(self, conn: AsyncConnection, instance: str) -> int:
        value = (
            await conn.execute(
                select(MeterPosition.metered_until).where(MeterPosition.instance == instance)
            )
        ).scalar_one_or_none()
        return int(value or 0)

    async def _set_position(self, conn: AsyncConnection, instance: str, value: int) -> None:
        stmt = self.insert(MeterPosition).values(instance=instance, metered_until=value)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["instance"], set_={"metered_until": stmt.excluded.metered_until}
            )
        )

    # -- writes ---------------------------------------------------------------

    async def register_workload(
        self,
        *,
        instance: str,
        kind: str,
        subject: str,
        jti: str,
        name: str,
        container_name: str,
        container_id: str,
        image: str,
        address: str,
        ports: dict[str, int],
        metered: bool = True,
        started_at: int | None = None,
        group_name: str | None = None,
    ) -> Workload:
        """Record a running workload and open its charge row, in one transaction.

        Called as soon as the container runs. Metering starts at `started_at`
        (default now): the next tick charges from there.
        """
        async with self.write() as conn:
            await self._lock_registry(conn)
            return await self._open_run(
                conn,
                instance=instance,
                kind=kind,
                subject=subject,
                jti=jti,
                name=name,
                container_name=container_name,
                container_id=container_id,
                image=image,
                address=address,
                ports=ports,
                metered=metered,
                started_at=started_at,
                group_name=group_name,
            )

    async def resume_workload(
        self, instance: str, container_id: str, *, address: str, ports: dict[str, int]
    ) -> Workload | None:
        """Open a new run for a container whose last run is closed (Docker
        restarted it). None when it has an open run or was never registered."""
        async with self.write() as conn:
            await self._lock_registry(conn)
            row = (
                await conn.execute(
                    select(Workload.__table__)
                    .where(Workload.instance == instance, Workload.container_id == container_id)
                    .order_by(Workload.id.desc())
                    .limit(1)
                )
            ).first()
            if row is None or row.state == RUNNING:
                return None
            last = _workload(row)
            return await self._open_run(
                conn,
                instance=instance,
                kind=last.kind,
                subject=last.subject,
                jti=last.jti,
                name=last.name,
                container_name=last.container_name,
                container_id=container_id,
                image=last.image,
                address=address,
                ports=ports,
                metered=last.metered,
                started_at=None,
                group_name=last.group_name,
            )

    async def _open_run(
        self,
        conn: AsyncConnection,
        *,
        instance: str,
        kind: str,
        subject: str,
        jti: str,
        name: str,
        container_name: str,
        container_id: str,
        image: str,
        address: str,
        ports: dict[str, int],
        metered: bool,
        started_at: int | None,
        group_name: str | None = None,
    ) -> Workload:
        started = int(time.time()) if started_at is None else started_at
        charge_id = (
            await conn.execute(
                insert(Charge)
                .values(
                    subject=subject,
                    jti=jti,
                    kind=kind,
                    workload=container_name,
                    seconds=0,
                    credits=0,
                )
                .returning(Charge.id)
            )
        ).scalar_one()
        row = (
            await conn.execute(
                insert(Workload)
                .values(
                    instance=instance,
                    kind=kind,
                    subject=subject,
                    jti=jti,
                    name=name,
                    container_name=container_name,
                    container_id=container_id,
                    image=image,
                    address=address,
                    ports=ports_json(ports),
                    state=RUNNING,
                    metered=metered,
                    started_at=started,
                    metered_until=started,
                    charge_id=charge_id,
                    group_name=group_name,
                )
                .returning(*Workload.__table__.columns)
            )
        ).one()
        return _workload(row)

    async def close_workload(
        self, instance: str, container_id: str, *, at: float, rate: int
    ) -> Workload | None:
        """Charge a running workload up to `at` (never past now, never back)
        and close it. Idempotent: None when no run of that container is open."""
        end_wanted = int(min(at, time.time()))
        async with self.write() as conn:
            await self._lock_registry(conn)
            row = (
                await conn.execute(
                    select(Workload.__table__).where(
                        Workload.instance == instance,
                        Workload.container_id == container_id,
                        Workload.state == RUNNING,
                    )
                )
            ).first()
            if row is None:
                return None
            workload = _workload(row)
            since = max(workload.metered_until, await self._position(conn, instance))
            end = max(since, end_wanted)
            seconds = end - since
            if seconds > 0 and workload.metered and workload.charge_id is not None:
                await conn.execute(
                    update(Charge)
                    .where(Charge.id == workload.charge_id)
                    .values(
                        seconds=Charge.seconds + seconds,
                        credits=Charge.credits + seconds * rate,
                    )
                )
                await self._move_account(conn, workload.subject, charged=seconds * rate)
            await conn.execute(
                update(Workload)
                .where(Workload.id == workload.id)
                .values(state=STOPPED, stopped_at=end, metered_until=end)
            )
        workload.state, workload.stopped_at, workload.metered_until = STOPPED, end, end
        return workload

    async def update_workload_endpoint(
        self, workload_id: int, address: str, ports: dict[str, int]
    ) -> None:
        """A running container's address or host ports changed (Docker restarted it)."""
        async with self.write() as conn:
            await conn.execute(
                update(Workload)
                .where(Workload.id == workload_id)
                .values(address=address, ports=ports_json(ports))
            )

    async def meter_tick(
        self, instance: str, now: int, rate: int, *, cap: int | None = None, step: int = 0
    ) -> TickResult:
        """Charge every running metered workload of `instance` up to `now`.

        One transaction, a constant number of statements. `step` (seconds)
        shifts every running workload's `metered_until` first, when the wall
        clock jumped: a jump neither charges nor forgives the seconds it
        skips. `cap` bounds the seconds charged per workload (the time that
        really passed since the previous tick); None on the first tick after
        a start, so the time the herder was down is charged, once.
        """
        running = and_(
            Workload.instance == instance,
            Workload.state == RUNNING,
            Workload.metered.is_(True),
            Workload.charge_id.is_not(None),
        )
        async with self.write() as conn:
            await self._lock_registry(conn)
            position = await self._position(conn, instance)
            if step:
                # A rare event: every run's own position moves with the clock.
                shifted = Workload.metered_until + step
                await conn.execute(
                    update(Workload)
                    .where(running)
                    .values(metered_until=case((shifted > now, literal(now)), else_=shifted))
                )
                position = min(position + step, now)
            since = _metered_until(position)
            seconds: ColumnElement[int] = literal(now) - since
            if cap is not None:
                seconds = case((seconds > cap, literal(cap)), else_=seconds)
            due = and_(running, since < now)
            per_run = select(Workload.charge_id, seconds.label("seconds")).where(due).subquery()
            charged = (
                await conn.execute(
                    update(Charge)
                    .where(Charge.id == per_run.c.charge_id)
                    .values(
                        seconds=Charge.seconds + per_run.c.seconds,
                        credits=Charge.credits + per_run.c.seconds * rate,
                    )
                )
            ).rowcount
            per_subject = (
                select(Workload.subject, func.sum(seconds).label("seconds"))
                .where(due)
                .group_by(Workload.subject)
                .subquery()
            )
            balances = await conn.execute(
                update(Account)
                .where(Account.subject == per_subject.c.subject)
                .values(charged=Account.charged + per_subject.c.seconds * rate)
                .returning(Account.subject, Account.granted - Account.charged)
            )
            broke = [subject for subject, left in balances if left <= 0]
            await self._set_position(conn, instance, max(position, now))
            exhausted: list[Any] = []
            for start in range(0, len(broke), 500):
                exhausted += (
                    await conn.execute(
                        select(Workload.__table__).where(
                            Workload.instance == instance,
                            Workload.state == RUNNING,
                            Workload.metered.is_(True),
                            Workload.subject.in_(broke[start : start + 500]),
                        )
                    )
                ).all()
        return TickResult(workloads=int(charged or 0), exhausted=[_workload(r) for r in exhausted])

    # -- reads ----------------------------------------------------------------

    async def running_workload(
        self, instance: str, kind: str, container_name: str
    ) -> Workload | None:
        """The open run of the container named `container_name` (exact), or None."""
        async with self.read() as conn:
            row = (
                await conn.execute(
                    select(Workload.__table__)
                    .where(
                        Workload.instance == instance,
                        Workload.kind == kind,
                        Workload.container_name == container_name,
                        Workload.state == RUNNING,
                    )
                    .order_by(Workload.id.desc())
                    .limit(1)
                )
            ).first()
        return None if row is None else _workload(row)

    async def running_workloads(self, instance: str, kind: str | None = None) -> list[Workload]:
        """Every open run of `instance` (of one kind when given)."""
        query = select(Workload.__table__).where(
            Workload.instance == instance, Workload.state == RUNNING
        )
        if kind is not None:
            query = query.where(Workload.kind == kind)
        async with self.read() as conn:
            rows = (await conn.execute(query.order_by(Workload.id))).all()
        return [_workload(r) for r in rows]

    async def last_workload(self, instance: str, container_id: str) -> Workload | None:
        """The latest run (open or closed) of a container, or None if never registered."""
        async with self.read() as conn:
            row = (
                await conn.execute(
                    select(Workload.__table__)
                    .where(Workload.instance == instance, Workload.container_id == container_id)
                    .order_by(Workload.id.desc())
                    .limit(1)
                )
            ).first()
        return None if row is None else _workload(row)

    async def known_containers(self, instance: str, container_ids: Sequence[str]) -> set[str]:
        """Which of `container_ids` the registry has ever recorded for `instance`."""
        known: set[str] = set()
        ids = list(container_ids)
        async with self.read() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = await conn.execute(
                    select(Workload.container_id)
                    .where(Workload.instance == instance, Workload.container_id.in_(chunk))
                    .distinct()
                )
                known.update(str(r[0]) for r in rows)
        return known
