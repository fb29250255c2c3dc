"""daemons: registry indexes for metering and reconciliation

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


def upgrade() -> None:
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
    with op.batch_alter_table("workloads", schema=None) as batch_op:
        batch_op.drop_index("ux_workloads_open_run")
        batch_op.drop_index("ix_workloads_container_id")
        batch_op.drop_index("ix_workloads_charge")
