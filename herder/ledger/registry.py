"""The workload registry and metering: the SQL behind daemons (and golems).

A running workload is one `workloads` row (state 'running') plus one open
`charges` row (`workloads.charge_id`) that holds the seconds and credits of
that run. Each instance has a meter (`meter_positions`): up to when its loop
has charged (`metered_until`, wall-clock seconds) and a clock (`seconds`,
`credits`) that every tick advances by the seconds it charges each run.

A run is unsettled until its first tick, which charges it from its own
`metered_until` (its start) and settles it: `base_seconds`/`base_credits`
record the clock minus that first charge. From then on the run's charge is
its charge row plus `clock - base`, so a tick, whatever the number of runs,
writes one meter row and settles only the runs it charges for the first
time; closing a run writes its accrual (and the seconds since the last
tick) into its charge row and its subject's account. Balances, audits and
totals add the accrual of the running runs, so a subject's balance always
equals its grants minus its charges, and in the tables themselves
`accounts.charged` equals the sum of the charge rows (both leave out the
same accruals).

A tick that comes late charges the seconds it missed, a tick that is
repeated charges nothing (the position does not move), and a run that ends
is charged up to its end and closed.

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

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    ScalarSelect,
    and_,
    case,
    cast,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import InstrumentedAttribute

from .models import Account, Charge, MeterPosition, Workload

RUNNING = "running"
STOPPED = "stopped"
# Seconds a `check_at` comes early: the wall clocks of herders sharing one
# database may disagree a little.
CHECK_MARGIN = 2


@dataclass(frozen=True)
class TickResult:
    """What one metering tick did."""

    workloads: int  # workloads charged
    exhausted: list[Workload]  # running metered workloads whose subject is at or below zero


@dataclass(frozen=True)
class Meter:
    """One instance's meter: its position and its clock."""

    position: int  # wall-clock second up to which its loop has charged
    seconds: int  # seconds every run settled since the first tick has accrued
    credits: int  # credits likewise
    rate: int  # credits per second at its last tick
    runs: int  # its settled running runs (they accrue)
    next_check: int | None = None  # the earliest `check_at` of all subjects, when read


def accrual(
    subject: ColumnElement[str] | InstrumentedAttribute[str] | str | None = None,
) -> ScalarSelect[int]:
    """Credits the running runs (of one subject) have accrued but not yet
    written into their charge rows: the sum of `clock - base`."""
    query = (
        select(func.coalesce(func.sum(MeterPosition.credits - Workload.base_credits), 0))
        .select_from(Workload)
        .join(MeterPosition, MeterPosition.instance == Workload.instance)
        .where(Workload.state == RUNNING, Workload.base_credits.is_not(None))
    )
    if subject is not None:
        query = query.where(Workload.subject == subject)
    return query.scalar_subquery()


def _bigint(value: ColumnElement[Any]) -> ColumnElement[int]:
    """PostgreSQL sums BIGINTs to NUMERIC; keep integer arithmetic."""
    return cast(value, BigInteger)


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

    async def _meter(self, conn: AsyncConnection, instance: str) -> Meter | None:
        row = (
            await conn.execute(
                select(
                    MeterPosition.metered_until,
                    MeterPosition.seconds,
                    MeterPosition.credits,
                    MeterPosition.rate,
                    MeterPosition.runs,
                    select(func.min(Account.check_at)).scalar_subquery(),
                ).where(MeterPosition.instance == instance)
            )
        ).first()
        if row is None:
            return None
        position, seconds, credits, rate, runs, next_check = row
        return Meter(
            int(position),
            int(seconds),
            int(credits),
            int(rate),
            int(runs),
            next_check=None if next_check is None else int(next_check),
        )

    async def _set_meter(self, conn: AsyncConnection, instance: str, meter: Meter) -> None:
        stmt = self.insert(MeterPosition).values(
            instance=instance,
            metered_until=meter.position,
            seconds=meter.seconds,
            credits=meter.credits,
            rate=meter.rate,
            runs=meter.runs,
        )
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["instance"],
                set_={
                    "metered_until": stmt.excluded.metered_until,
                    "seconds": stmt.excluded.seconds,
                    "credits": stmt.excluded.credits,
                    "rate": stmt.excluded.rate,
                    "runs": stmt.excluded.runs,
                },
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
        self,
        instance: str,
        container_id: str,
        *,
        address: str,
        ports: dict[str, int],
        started_at: int | None = None,
    ) -> Workload | None:
        """Open a new run (from `started_at`, default now) for a container
        whose last run is closed (Docker restarted it). None when it has an
        open run or was never registered."""
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
                started_at=started_at,
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
            meter = await self._meter(conn, instance)
            position = 0 if meter is None else meter.position
            seconds = credits = 0
            if meter is not None and workload.base_seconds is not None:
                since = position  # settled: charged up to the position, plus the accrual
                seconds = meter.seconds - workload.base_seconds
                credits = meter.credits - (workload.base_credits or 0)
                await conn.execute(
                    update(MeterPosition)
                    .where(MeterPosition.instance == instance)
                    .values(runs=MeterPosition.runs - 1)
                )
            else:
                since = max(workload.metered_until, position)
            end = max(since, end_wanted)
            seconds += end - since
            credits += (end - since) * rate
            if seconds > 0 and workload.metered and workload.charge_id is not None:
                await conn.execute(
                    update(Charge)
                    .where(Charge.id == workload.charge_id)
                    .values(seconds=Charge.seconds + seconds, credits=Charge.credits + credits)
                )
                await self._move_account(conn, workload.subject, charged=credits)
            await conn.execute(
                update(Workload)
                .where(Workload.id == workload.id)
                .values(
                    state=STOPPED,
                    stopped_at=end,
                    metered_until=end,
                    base_seconds=None,
                    base_credits=None,
                )
            )
        workload.base_seconds = workload.base_credits = None
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

        One transaction and a constant number of statements, which write the
        meter, settle the runs charged for the first time, and look at the
        subjects whose `check_at` has come: the work does not grow with the
        number of runs that simply go on running. `step` (seconds) shifts
        the position and every unsettled run's `metered_until` first, when
        the wall clock jumped: a jump neither charges nor forgives the
        seconds it skips. `cap` bounds the seconds charged per workload (the
        time that really passed since the previous tick); None on the first
        tick after a start, so the time the herder was down is charged, once.
        """
        unsettled = and_(
            Workload.instance == instance,
            Workload.state == RUNNING,
            Workload.base_seconds.is_(None),
            Workload.metered.is_(True),
            Workload.charge_id.is_not(None),
        )
        async with self.write() as conn:
            await self._lock_registry(conn)
            meter = await self._meter(conn, instance) or Meter(0, 0, 0, rate, 0, next_check=now)
            check = meter.next_check is not None and meter.next_check <= now
            position = meter.position
            if step:
                # A rare event: the unsettled runs' own positions move with the
                # clock, and every `check_at` (wall-clock seconds) is looked at again.
                shifted = Workload.metered_until + step
                await conn.execute(
                    update(Workload)
                    .where(unsettled)
                    .values(metered_until=case((shifted > now, literal(now)), else_=shifted))
                )
                position = min(position + step, now)
                await conn.execute(
                    update(Account).where(Account.check_at > now).values(check_at=now)
                )
                check = True
            if rate != meter.rate:  # the bounds of this instance's subjects assumed the old rate
                accruing_here = select(Workload.subject).where(
                    Workload.instance == instance,
                    Workload.state == RUNNING,
                    Workload.base_seconds.is_not(None),
                )
                await conn.execute(
                    update(Account).where(Account.subject.in_(accruing_here)).values(check_at=now)
                )
                check = True
            # Every settled run is charged the same: the seconds since the position.
            elapsed = max(0, now - position) if meter.position else 0
            if cap is not None:
                elapsed = min(elapsed, cap)
            seconds, credits = meter.seconds + elapsed, meter.credits + elapsed * rate
            # A run charged for the first time: from its own start, or the position.
            since = case(
                (Workload.metered_until > position, Workload.metered_until),
                else_=literal(position),
            )
            first: ColumnElement[int] = literal(now) - since
            if cap is not None:
                first = case((first > cap, literal(cap)), else_=first)
            starting = (
                await conn.execute(
                    update(Workload)
                    .where(unsettled, since < now)
                    .values(
                        base_seconds=literal(seconds) - first,
                        base_credits=literal(credits) - first * rate,
                    )
                    .returning(Workload.subject)
                )
            ).all()
            if starting:  # their subjects' bounds did not count these runs
                subjects = sorted({row[0] for row in starting})
                for start in range(0, len(subjects), 500):
                    await conn.execute(
                        update(Account)
                        .where(Account.subject.in_(subjects[start : start + 500]))
                        .values(check_at=now)
                    )
                check = True
            runs = meter.runs + len(starting)
            await self._set_meter(
                conn, instance, Meter(max(position, now), seconds, credits, rate, runs)
            )
            exhausted = await self._check_subjects(conn, instance, now) if check else []
        return TickResult(
            workloads=(meter.runs if elapsed else 0) + len(starting),
            exhausted=[_workload(r) for r in exhausted],
        )

    async def _check_subjects(self, conn: AsyncConnection, instance: str, now: int) -> list[Any]:
        """The running metered runs of `instance` whose subjects are at or below
        zero, among the subjects whose `check_at` has come; those get a new
        `check_at`.

        Between now and a later time t, a run accrues at most `rate * (t -
        position)` of its instance (a late or restarted meter charges the
        seconds it missed, never more), so a subject with `slack` = balance
        minus what its meters are behind, and `burn` = the sum of its runs'
        rates, cannot reach zero before `now + slack // burn`.
        """
        await conn.execute(
            update(Account)
            .where(
                Account.check_at <= now,
                ~select(Workload.id)
                .where(
                    Workload.subject == Account.subject,
                    Workload.state == RUNNING,
                    Workload.base_credits.is_not(None),
                )
                .exists(),
            )
            .values(check_at=None)
        )
        behind = case(
            (MeterPosition.metered_until < now, literal(now) - MeterPosition.metered_until),
            else_=literal(0),
        )
        per_subject = (
            select(
                Workload.subject,
                _bigint(func.sum(MeterPosition.credits - Workload.base_credits)).label("accrued"),
                _bigint(func.sum(behind * MeterPosition.rate)).label("behind"),
                _bigint(func.sum(MeterPosition.rate)).label("burn"),
            )
            .select_from(Workload)
            .join(MeterPosition, MeterPosition.instance == Workload.instance)
            .where(
                Workload.state == RUNNING,
                Workload.base_credits.is_not(None),
                Workload.subject.in_(select(Account.subject).where(Account.check_at <= now)),
            )
            .group_by(Workload.subject)
            .subquery()
        )
        balance = Account.granted - Account.charged - per_subject.c.accrued
        broke = (
            select(Account.subject)
            .join(per_subject, per_subject.c.subject == Account.subject)
            .where(balance <= 0)
        )
        exhausted = (
            await conn.execute(
                select(Workload.__table__).where(
                    Workload.instance == instance,
                    Workload.state == RUNNING,
                    Workload.metered.is_(True),
                    Workload.subject.in_(broke),
                )
            )
        ).all()
        slack = balance - per_subject.c.behind
        await conn.execute(
            update(Account)
            .where(Account.subject == per_subject.c.subject)
            .values(
                check_at=case(
                    (slack <= 0, literal(now)),
                    (per_subject.c.burn <= 0, None),
                    else_=literal(now - CHECK_MARGIN) + slack // per_subject.c.burn,
                )
            )
        )
        return list(exhausted)

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

    async def charge_of(self, charge_id: int) -> tuple[int, int]:
        """(seconds, credits) of one charge row, with its run's accrual while it runs."""
        async with self.read() as conn:
            row = (
                await conn.execute(
                    select(Charge.seconds, Charge.credits).where(Charge.id == charge_id)
                )
            ).one()
            accrued = await self._accrued_charges(conn, [charge_id])
        seconds, credits = accrued.get(charge_id, (0, 0))
        return int(row.seconds) + seconds, int(row.credits) + credits

    @staticmethod
    async def _accrued_charges(
        conn: AsyncConnection, charge_ids: Sequence[int]
    ) -> dict[int, tuple[int, int]]:
        """(seconds, credits) the running runs of these charge rows have accrued
        since the rows were written (rows of closed runs are complete)."""
        accrued: dict[int, tuple[int, int]] = {}
        ids = list(charge_ids)
        for start in range(0, len(ids), 500):
            rows = await conn.execute(
                select(
                    Workload.charge_id,
                    MeterPosition.seconds - Workload.base_seconds,
                    MeterPosition.credits - Workload.base_credits,
                )
                .select_from(Workload)
                .join(MeterPosition, MeterPosition.instance == Workload.instance)
                .where(
                    Workload.charge_id.in_(ids[start : start + 500]),
                    Workload.state == RUNNING,
                    Workload.base_seconds.is_not(None),
                )
            )
            for charge_id, seconds, credits in rows:
                if charge_id is not None:
                    accrued[charge_id] = (int(seconds), int(credits))
        return accrued
