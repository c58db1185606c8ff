"""schedules: scheduled and recurring calculations, their fire records, and the link
from a calculation back to the schedule (and fire instant) that created it

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from crunchql.db import types as db_types

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
UTC = db_types.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("input", JSONType, nullable=False),
        sa.Column("cron", sa.String(length=200), nullable=True),
        sa.Column("run_at", UTC, nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("starts_at", UTC, nullable=True),
        sa.Column("ends_at", UTC, nullable=True),
        sa.Column("misfire_policy", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("next_fire_at", UTC, nullable=True),
        sa.Column("skipped_runs", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_schedules_owner_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
    )
    op.create_index("ix_schedules_owner_created", "schedules", ["owner_id", "created_at", "id"])
    op.create_index("ix_schedules_status_next_fire_at", "schedules", ["status", "next_fire_at"])
    op.create_table(
        "schedule_fires",
        sa.Column("schedule_id", sa.Uuid(), nullable=False),
        sa.Column("fire_at", UTC, nullable=False),
        sa.Column("outcome", sa.String(length=24), nullable=False),
        sa.Column("calculation_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["schedules.id"],
            name=op.f("fk_schedule_fires_schedule_id_schedules"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["calculation_id"],
            ["calculations.id"],
            name=op.f("fk_schedule_fires_calculation_id_calculations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("schedule_id", "fire_at", name=op.f("pk_schedule_fires")),
    )
    # Plain columns (no foreign key): SQLite cannot add one to an existing table, and a
    # deleted schedule's calculations stay (the delete clears their schedule_id).
    op.add_column("calculations", sa.Column("schedule_id", sa.Uuid(), nullable=True))
    op.add_column("calculations", sa.Column("scheduled_for", UTC, nullable=True))
    op.create_index("ix_calculations_schedule_id", "calculations", ["schedule_id"])


def downgrade() -> None:
    op.drop_index("ix_calculations_schedule_id", table_name="calculations")
    with op.batch_alter_table("calculations") as batch:
        batch.drop_column("scheduled_for")
        batch.drop_column("schedule_id")
    op.drop_table("schedule_fires")
    op.drop_index("ix_schedules_status_next_fire_at", table_name="schedules")
    op.drop_index("ix_schedules_owner_created", table_name="schedules")
    op.drop_table("schedules")
