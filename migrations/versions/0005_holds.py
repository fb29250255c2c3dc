"""holds: what runs in flight may cost and which streams are open, counted
by every herder replica sharing the database

A row is held by one replica (`replica`) until `expires_at` (epoch
milliseconds); the replica renews its rows every few seconds, so those of a
replica that died stop counting once they expire. `kind` is 'credits' (a
minion run's most possible cost, `credits`) or 'stream' (a log follow or an
attach socket of `subject` on the herder `instance`).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "holds",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("instance", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=320), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("replica", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_holds_subject", "holds", ["kind", "subject"])
    op.create_index("ix_holds_instance", "holds", ["kind", "instance"])
    op.create_index("ix_holds_expires", "holds", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_holds_expires", table_name="holds")
    op.drop_index("ix_holds_instance", table_name="holds")
    op.drop_index("ix_holds_subject", table_name="holds")
    op.drop_table("holds")
