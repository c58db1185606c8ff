"""worker device: what a live worker runs kernels on

Adds ``workers.device`` ("cpu" or "gpu", default "cpu"): the API routes a calculation to
the ``calculations.gpu`` queue only while a worker with device "gpu" has a fresh
heartbeat.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "workers",
        sa.Column("device", sa.String(length=16), nullable=False, server_default="cpu"),
    )


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("device")
