"""calculation shards: a calculation split over many workers

Adds ``calculations.shards`` (1 when not split), ``calculations.shards_done`` and
``calculations.device``, and the ``calculation_shards`` table: one row per shard, with
its own claim (worker, heartbeat), progress and stored partial result.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from crunchql.db import types as db_types

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
UTC = db_types.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.add_column(
        "calculations", sa.Column("shards", sa.Integer(), nullable=False, server_default="1")
    )
    op.add_column(
        "calculations",
        sa.Column("shards_done", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column("calculations", sa.Column("device", sa.String(length=16), nullable=True))
    op.create_table(
        "calculation_shards",
        sa.Column("calculation_id", sa.Uuid(), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("partial", JSONType, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=100), nullable=True),
        sa.Column("heartbeat_at", UTC, nullable=True),
        sa.Column("finished_at", UTC, nullable=True),
        sa.ForeignKeyConstraint(
            ["calculation_id"],
            ["calculations.id"],
            name=op.f("fk_calculation_shards_calculation_id_calculations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("calculation_id", "shard", name=op.f("pk_calculation_shards")),
    )
    op.create_index("ix_calculation_shards_status", "calculation_shards", ["status"])


def downgrade() -> None:
    op.drop_index("ix_calculation_shards_status", table_name="calculation_shards")
    op.drop_table("calculation_shards")
    with op.batch_alter_table("calculations") as batch:
        batch.drop_column("device")
        batch.drop_column("shards_done")
        batch.drop_column("shards")
