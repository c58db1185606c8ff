"""accounts: sessions, audit events, users.last_login_at

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from crunchql.db import types as db_types

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
UTC = db_types.UTCDateTime(timezone=True)


def _refresh_tokens(*, with_session_key: bool = False) -> sa.Table:
    """refresh_tokens as revision 0001 made it (for SQLite's batch rebuild)."""
    metadata = sa.MetaData()
    sa.Table("users", metadata, sa.Column("id", sa.Uuid(), primary_key=True))
    sa.Table("auth_sessions", metadata, sa.Column("id", sa.Uuid(), primary_key=True))
    return sa.Table(
        "refresh_tokens",
        metadata,
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("family_id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("expires_at", UTC, nullable=False),
        sa.Column("used_at", UTC, nullable=True),
        sa.Column("revoked_at", UTC, nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_refresh_tokens_user_id_users", ondelete="CASCADE"
        ),
        *(
            [
                sa.ForeignKeyConstraint(
                    ["family_id"], ["auth_sessions.id"],
                    name="fk_refresh_tokens_family_id_auth_sessions", ondelete="CASCADE",
                )
            ]
            if with_session_key
            else []
        ),
        sa.PrimaryKeyConstraint("id", name="pk_refresh_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_refresh_tokens_token_hash"),
        sa.Index("ix_refresh_tokens_family_id", "family_id"),
    )  # fmt: skip


def upgrade() -> None:
    # Not in batch mode: SQLite adds a column in place, and rebuilding the table would
    # lose the expression index on lower(email).
    op.add_column("users", sa.Column("last_login_at", UTC, nullable=True))
    op.create_table(
        "auth_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("last_used_at", UTC, nullable=False),
        sa.Column("expires_at", UTC, nullable=False),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("revoked_at", UTC, nullable=True),
        sa.Column("revoked_reason", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_auth_sessions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_sessions")),
    )  # fmt: skip
    op.create_index("ix_auth_sessions_user_id", "auth_sessions", ["user_id"])
    # Every refresh-token family already issued becomes a session that ends where its
    # newest token ends (rotation no longer extends it from here on); a family whose
    # tokens were all revoked is a revoked session.
    op.execute(
        "INSERT INTO auth_sessions (id, user_id, created_at, last_used_at, expires_at, "
        "revoked_at, revoked_reason) "
        "SELECT family_id, user_id, min(created_at), max(created_at), max(expires_at), "
        "CASE WHEN count(*) = count(revoked_at) THEN max(revoked_at) END, "
        "CASE WHEN count(*) = count(revoked_at) THEN 'MIGRATED' END "
        "FROM refresh_tokens GROUP BY family_id, user_id"
    )
    if op.get_bind().dialect.name == "sqlite":
        # SQLite adds a constraint only by rebuilding the table: from this description
        # of it, so that nothing is reflected (reflection would drag in users and the
        # expression index it cannot read).
        with op.batch_alter_table("refresh_tokens", copy_from=_refresh_tokens()) as batch:
            batch.create_foreign_key(
                op.f("fk_refresh_tokens_family_id_auth_sessions"),
                "auth_sessions",
                ["family_id"],
                ["id"],
                ondelete="CASCADE",
            )
    else:
        op.create_foreign_key(
            op.f("fk_refresh_tokens_family_id_auth_sessions"),
            "refresh_tokens",
            "auth_sessions",
            ["family_id"],
            ["id"],
            ondelete="CASCADE",
        )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("at", UTC, nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("target_user_id", sa.Uuid(), nullable=True),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("details", JSONType, nullable=False),
        sa.ForeignKeyConstraint(
            ["actor_id"], ["users.id"], name=op.f("fk_audit_events_actor_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["target_user_id"], ["users.id"], name=op.f("fk_audit_events_target_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )  # fmt: skip
    op.create_index("ix_audit_events_at", "audit_events", ["at", "id"])
    op.create_index("ix_audit_events_action_at", "audit_events", ["action", "at"])
    op.create_index("ix_audit_events_actor_id", "audit_events", ["actor_id"])
    op.create_index("ix_audit_events_target_user_id", "audit_events", ["target_user_id"])


def downgrade() -> None:
    op.drop_table("audit_events")
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table(
            "refresh_tokens", copy_from=_refresh_tokens(with_session_key=True)
        ) as batch:
            batch.drop_constraint(
                op.f("fk_refresh_tokens_family_id_auth_sessions"), type_="foreignkey"
            )
    else:
        op.drop_constraint(
            op.f("fk_refresh_tokens_family_id_auth_sessions"), "refresh_tokens", "foreignkey"
        )
    op.drop_index("ix_auth_sessions_user_id", table_name="auth_sessions")
    op.drop_table("auth_sessions")
    op.drop_column("users", "last_login_at")
