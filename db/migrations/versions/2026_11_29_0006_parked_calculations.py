"""parked calculations, and an index of the active ones

Adds ``calculations.parked_at``: set when a worker leaves a calculation QUEUED because
its owner already has as many runs as allowed (the message is dropped). When one of the
owner's runs ends, only such rows are sent again; before, the owner's oldest QUEUED rows
were, whether or not their message was still in the queue (a duplicate per finish, and
with a large limit, hundreds). The partial index keeps that look-up to the parked rows.

Adds the partial index ``ix_calculations_owner_active`` (owner, status) of QUEUED and
RUNNING rows: the submit's active-limit count and the claim's running-limit count read
only those, where they used to walk the owner's whole history through
``ix_calculations_owner_created`` (a user with 10^5 finished calculations paid for each of
them on every submit and every claim).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from crunchql.db import types as db_types

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = db_types.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.add_column("calculations", sa.Column("parked_at", UTC, nullable=True))
    op.create_index(
        "ix_calculations_owner_active",
        "calculations",
        ["owner_id", "status"],
        postgresql_where=sa.text("status IN ('QUEUED', 'RUNNING')"),
        sqlite_where=sa.text("status IN ('QUEUED', 'RUNNING')"),
    )
    op.create_index(
        "ix_calculations_parked",
        "calculations",
        ["owner_id", "created_at", "id"],
        postgresql_where=sa.text("parked_at IS NOT NULL"),
        sqlite_where=sa.text("parked_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_calculations_parked", table_name="calculations")
    op.drop_index("ix_calculations_owner_active", table_name="calculations")
    with op.batch_alter_table("calculations") as batch:
        batch.drop_column("parked_at")
