"""daemons: meter positions, registry indexes for metering and reconciliation

`meter_positions` holds, per herder instance, up to when its running
workloads have been charged, so a tick writes one row there instead of one
per workload.

The metering tick joins workloads to their open charge row (`charge_id`);
the reconciler and the event watcher look rows up by container id, and a
container has at most one open run.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


# The metering tick rewrites every open charge row and charged account
# each second. On PostgreSQL, free room in each page lets those be HOT updates
# (no index entries, pruned in place) instead of new tuples in every index.
HOT_FILLFACTOR = {"charges": 80, "accounts": 70, "meter_positions": 50}


def upgrade() -> None:
    op.create_table(
        "meter_positions",
        sa.Column("instance", sa.String(length=64), nullable=False),
        sa.Column("metered_until", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("instance"),
    )
    if op.get_bind().dialect.name == "postgresql":
        for table, fillfactor in HOT_FILLFACTOR.items():
            op.execute(f"ALTER TABLE {table} SET (fillfactor = {fillfactor})")
    with op.batch_alter_table("workloads", schema=None) as batch_op:
        batch_op.create_index("ix_workloads_charge", ["charge_id"], unique=False)
        batch_op.create_index(
            "ix_workloads_container_id", ["instance", "container_id"], unique=False
        )
        # At most one open run per container.
        batch_op.create_index(
            "ux_workloads_open_run",
            ["instance", "container_id"],
            unique=True,
            sqlite_where=sa.text("state = 'running'"),
            postgresql_where=sa.text("state = 'running'"),
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in HOT_FILLFACTOR:
            op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
    op.drop_table("meter_positions")
    with op.batch_alter_table("workloads", schema=None) as batch_op:
        batch_op.drop_index("ux_workloads_open_run")
        batch_op.drop_index("ix_workloads_container_id")
        batch_op.drop_index("ix_workloads_charge")
