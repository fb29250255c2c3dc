"""metering: a clock per instance instead of rewriting every open charge

A tick used to add its seconds to every open charge row and every charged
account: work in proportion to the running workloads, each second. Now each
instance's `meter_positions` row carries a clock (`seconds`, `credits`: what
every run settled since has accrued) and a running run its clock reading at
settlement (`workloads.base_seconds`, `base_credits`); its charge is its
charge row plus the difference, written into the row and the account when
the run closes. A tick writes the clock, settles the runs it charges for the
first time, and looks only at the subjects whose `accounts.check_at` (a
lower bound on when their balance can reach zero) has come.

Runs already charged up to their instance's position are settled at clock 0
(their charge rows are up to date) and their subjects checked at the first
tick; younger ones settle at their first tick.
The downgrade writes every accrual back into the charge rows and accounts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SETTLED_RUNNING = "w.state = 'running' AND w.base_seconds IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("meter_positions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("seconds", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("credits", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("rate", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("runs", sa.BigInteger(), nullable=False, server_default="0"))
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("check_at", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_accounts_check_at", ["check_at"], unique=False)
    with op.batch_alter_table("workloads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("base_seconds", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("base_credits", sa.BigInteger(), nullable=True))
        batch_op.drop_index("ix_workloads_running")
        batch_op.create_index(
            "ix_workloads_unsettled", ["instance", "state", "base_seconds"], unique=False
        )
        batch_op.create_index(
            "ix_workloads_accruing",
            ["state", "subject", "instance", "base_credits"],
            unique=False,
        )
    op.execute(
        "UPDATE workloads SET base_seconds = 0, base_credits = 0"
        " WHERE state = 'running' AND metered AND charge_id IS NOT NULL"
        " AND metered_until <= (SELECT p.metered_until FROM meter_positions p"
        " WHERE p.instance = workloads.instance)"
    )
    op.execute(
        "UPDATE meter_positions SET runs = (SELECT count(*) FROM workloads w"
        f" WHERE w.instance = meter_positions.instance AND {SETTLED_RUNNING})"
    )
    op.execute(
        "UPDATE accounts SET check_at = 0 WHERE subject IN"
        f" (SELECT w.subject FROM workloads w WHERE {SETTLED_RUNNING})"
    )


def downgrade() -> None:
    settled = (
        "SELECT w.charge_id FROM workloads w WHERE w.state = 'running'"
        " AND w.base_seconds IS NOT NULL AND w.charge_id IS NOT NULL"
    )
    accrual = (
        "FROM workloads w JOIN meter_positions p ON p.instance = w.instance"
        f" WHERE {SETTLED_RUNNING}"
    )
    op.execute(
        "UPDATE charges SET"
        f" seconds = seconds + (SELECT p.seconds - w.base_seconds {accrual}"
        " AND w.charge_id = charges.id),"
        f" credits = credits + (SELECT p.credits - w.base_credits {accrual}"
        " AND w.charge_id = charges.id)"
        f" WHERE id IN ({settled})"
    )
    op.execute(
        "UPDATE accounts SET"
        f" charged = charged + (SELECT sum(p.credits - w.base_credits) {accrual}"
        " AND w.subject = accounts.subject)"
        f" WHERE subject IN (SELECT w.subject FROM workloads w WHERE {SETTLED_RUNNING})"
    )
    op.execute(
        "UPDATE workloads SET metered_until = (SELECT p.metered_until FROM meter_positions p"
        " WHERE p.instance = workloads.instance)"
        " WHERE state = 'running' AND base_seconds IS NOT NULL"
    )
    with op.batch_alter_table("workloads", schema=None) as batch_op:
        batch_op.drop_index("ix_workloads_accruing")
        batch_op.drop_index("ix_workloads_unsettled")
        batch_op.create_index("ix_workloads_running", ["instance", "state"], unique=False)
        batch_op.drop_column("base_credits")
        batch_op.drop_column("base_seconds")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_index("ix_accounts_check_at")
        batch_op.drop_column("check_at")
    with op.batch_alter_table("meter_positions", schema=None) as batch_op:
        batch_op.drop_column("runs")
        batch_op.drop_column("rate")
        batch_op.drop_column("credits")
        batch_op.drop_column("seconds")
