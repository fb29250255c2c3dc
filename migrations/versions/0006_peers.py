"""peers: the replicas of a cluster, where each can be reached

Each replica of a cluster (`CLUSTER_SECRET`) renews its row every few
seconds; the others find the replica on a node (attach, exec) or a given
replica (the relay) by it. A row not renewed expires.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "peers",
        sa.Column("replica", sa.String(length=128), nullable=False),
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("url", sa.String(length=512), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("replica"),
    )
    op.create_index("ix_peers_node", "peers", ["node"])


def downgrade() -> None:
    op.drop_index("ix_peers_node", table_name="peers")
    op.drop_table("peers")
