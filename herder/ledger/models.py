"""The ledger's tables. Alembic (`migrations/`) owns the schema; these models
must match the latest migration."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Grant(Base):
    """Credits a token brought: one row per `jti`, written on the token's first use."""

    __tablename__ = "grants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    jti: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    subject: Mapped[str] = mapped_column(String(320), index=True, nullable=False)
    credits: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class Charge(Base):
    """Credits spent: who, on what work, how many seconds, when."""

    __tablename__ = "charges"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(320), index=True, nullable=False)
    jti: Mapped[str] = mapped_column(String(128), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    workload: Mapped[str] = mapped_column(String(255), nullable=False)
    seconds: Mapped[int] = mapped_column(BigInteger, nullable=False)
    credits: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class Account(Base):
    """Running totals per subject, updated in the same transaction as every
    grant and charge, so balance = granted - charged = sum(grants) - sum(charges)
    (both leaving out what running runs accrued since; see `Workload`).

    `check_at` (wall-clock second) is no later than the earliest time the
    subject's balance could reach zero, so a metering tick looks only at
    subjects whose `check_at` has come; NULL while none of its runs accrues."""

    __tablename__ = "accounts"
    subject: Mapped[str] = mapped_column(String(320), primary_key=True)
    granted: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    charged: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    check_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)


class Revocation(Base):
    __tablename__ = "revocations"
    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    revoked_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class Workload(Base):
    """The registry of workloads the herder started (desired state).

    A row is written as soon as the container exists and closed (`state`
    'stopped', `stopped_at`) when it is gone; `charge_id` is the run's charge
    row. Until its first tick a running run is unsettled (`base_seconds`
    NULL) and has been charged nothing since `metered_until` (its start, or a
    clock-step shift). From its first tick on it accrues with its instance's
    meter clock: its charge is its charge row plus `meter_positions.seconds -
    base_seconds` seconds (`credits - base_credits` credits), which closing
    the run writes into the charge row and its account. A closed row has been
    charged up to `metered_until`.
    """

    __tablename__ = "workloads"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance: Mapped[str] = mapped_column(String(64), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    subject: Mapped[str] = mapped_column(String(320), nullable=False)
    jti: Mapped[str] = mapped_column(String(128), nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    container_name: Mapped[str] = mapped_column(String(255), nullable=False)
    container_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    image: Mapped[str] = mapped_column(String(512), nullable=False, default="")
    address: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    ports: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    group_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="running")
    metered: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    started_at: Mapped[int] = mapped_column(BigInteger, nullable=False)
    metered_until: Mapped[int] = mapped_column(BigInteger, nullable=False)
    stopped_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    charge_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("charges.id", ondelete="SET NULL"), nullable=True
    )
    base_seconds: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    base_credits: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (
        # The tick settles a run's first charge: running runs of one instance, unsettled.
        Index("ix_workloads_unsettled", "instance", "state", "base_seconds"),
        # Balances and the tick's exhaustion check sum the accrual of running runs
        # per subject (covering, so PostgreSQL reads the index only).
        Index("ix_workloads_accruing", "state", "subject", "instance", "base_credits"),
        Index("ix_workloads_subject", "subject", "kind", "state"),
        Index("ix_workloads_container", "instance", "container_name"),
        Index("ix_workloads_container_id", "instance", "container_id"),
        Index("ix_workloads_charge", "charge_id"),
        Index(
            "ux_workloads_open_run",
            "instance",
            "container_id",
            unique=True,
            sqlite_where=text("state = 'running'"),
            postgresql_where=text("state = 'running'"),
        ),
    )


class MeterPosition(Base):
    """The meter of one herder instance: up to when (wall-clock seconds) its
    loop has charged its running workloads, and its clock: the seconds and
    credits every run settled since the first tick has accrued (a tick adds
    the seconds it charges to each run, so it writes this one row however
    many runs there are); the rate of its last tick and how many runs accrue."""

    __tablename__ = "meter_positions"
    instance: Mapped[str] = mapped_column(String(64), primary_key=True)
    metered_until: Mapped[int] = mapped_column(BigInteger, nullable=False)
    seconds: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    credits: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    rate: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    runs: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")


class Lease(Base):
    """A named role one herder replica holds until `expires_at` (epoch
    milliseconds) unless it renews it: who meters and reconciles a cluster's
    workloads. A holder that dies loses it when it expires."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128), nullable=False)
    expires_at: Mapped[int] = mapped_column(BigInteger, nullable=False)


class Hold(Base):
    """Something in flight that counts against a limit until it ends: a
    minion run's most possible cost (`kind` 'credits') or an open log follow
    or attach socket (`kind` 'stream'). Held by one herder replica, which
    renews `expires_at` (epoch milliseconds) while it lives: the rows of a
    replica that died stop counting when they expire."""

    __tablename__ = "holds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    instance: Mapped[str] = mapped_column(String(64), nullable=False)
    subject: Mapped[str] = mapped_column(String(320), nullable=False)
    credits: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    replica: Mapped[str] = mapped_column(String(128), nullable=False)
    expires_at: Mapped[int] = mapped_column(BigInteger, nullable=False)

    __table_args__ = (
        Index("ix_holds_subject", "kind", "subject"),
        Index("ix_holds_instance", "kind", "instance"),
        Index("ix_holds_expires", "expires_at"),
    )


class Peer(Base):
    """A replica of a cluster: its node, the URL the others reach it at, and
    until when (epoch milliseconds) it counts as alive unless it renews."""

    __tablename__ = "peers"
    __table_args__ = (Index("ix_peers_node", "node"),)
    replica: Mapped[str] = mapped_column(String(128), primary_key=True)
    node: Mapped[str] = mapped_column(String(128), nullable=False)
    url: Mapped[str] = mapped_column(String(512), nullable=False)
    expires_at: Mapped[int] = mapped_column(BigInteger, nullable=False)
