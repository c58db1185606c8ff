"""SQLAlchemy models. The schema itself is made only by the Alembic migrations."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from crunchql.core.lifecycle import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    CalculationSnapshot,
    CalculationStatus,
)
from crunchql.db.types import JSONType, UTCDateTime, utcnow

__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "AuditAction",
    "AuditEvent",
    "AuthSession",
    "Base",
    "Calculation",
    "CalculationShard",
    "CalculationStatus",
    "RefreshToken",
    "Role",
    "Schedule",
    "ScheduleFire",
    "ScheduleStatus",
    "ShardStatus",
    "User",
    "Worker",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Role(StrEnum):
    USER = "USER"
    ADMIN = "ADMIN"


class AuditAction(StrEnum):
    """What an audit event records (the contract's AuditAction)."""

    REGISTERED = "REGISTERED"
    LOGIN_SUCCEEDED = "LOGIN_SUCCEEDED"
    LOGIN_FAILED = "LOGIN_FAILED"
    LOGIN_RATE_LIMITED = "LOGIN_RATE_LIMITED"
    REFRESH_TOKEN_REUSED = "REFRESH_TOKEN_REUSED"  # noqa: S105 - a name, not a secret
    LOGGED_OUT = "LOGGED_OUT"
    LOGGED_OUT_EVERYWHERE = "LOGGED_OUT_EVERYWHERE"
    SESSION_REVOKED = "SESSION_REVOKED"
    PASSWORD_CHANGED = "PASSWORD_CHANGED"  # noqa: S105 - a name, not a secret
    ROLE_CHANGED = "ROLE_CHANGED"
    USER_DISABLED = "USER_DISABLED"
    USER_ENABLED = "USER_ENABLED"
    CALCULATION_CANCELLED_BY_ADMIN = "CALCULATION_CANCELLED_BY_ADMIN"


def _stored_as_text(enum: type[StrEnum], length: int) -> Enum:
    """A Python enum over the plain VARCHAR column the migrations made: the stored values
    are the members' values, no database enum type and no CHECK constraint."""
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # Stored normalised (trimmed, lower-cased); the unique index on lower(email) guards
    # against any writer that forgets to normalise.
    email: Mapped[str] = mapped_column(String(320))
    password_hash: Mapped[str] = mapped_column(String(100))
    role: Mapped[Role] = mapped_column(_stored_as_text(Role, 16), default=Role.USER)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    __table_args__ = (Index("uq_users_email_lower", func.lower(email), unique=True),)


class AuthSession(Base):
    """One login (or register): one refresh-token family, whose id is this session's.

    ``expires_at`` is absolute: rotating the refresh token never moves it. Access
    tokens carry the session id (``sid``), so revoking the session ends them too.
    """

    __tablename__ = "auth_sessions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    user_agent: Mapped[str | None] = mapped_column(String(512), default=None)
    address: Mapped[str | None] = mapped_column(String(64), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # Why it ended (an AuditAction name); for operators reading the table.
    revoked_reason: Mapped[str | None] = mapped_column(String(40), default=None)

    __table_args__ = (Index("ix_auth_sessions_user_id", "user_id"),)


class AuditEvent(Base):
    """Who did what, from where. Written in the transaction of the action it records;
    never holds a password, a token or a hash."""

    __tablename__ = "audit_events"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    action: Mapped[AuditAction] = mapped_column(_stored_as_text(AuditAction, 40))
    actor_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    target_user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    address: Mapped[str | None] = mapped_column(String(64), default=None)
    user_agent: Mapped[str | None] = mapped_column(String(512), default=None)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    __table_args__ = (
        Index("ix_audit_events_at", "at", "id"),
        Index("ix_audit_events_action_at", "action", "at"),
        Index("ix_audit_events_actor_id", "actor_id"),
        Index("ix_audit_events_target_user_id", "target_user_id"),
    )


class RefreshToken(Base):
    """One opaque refresh token, stored as its SHA-256. A login starts a family;
    every rotation adds a member and marks its predecessor used."""

    __tablename__ = "refresh_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # The session (AuthSession.id) this token belongs to.
    family_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("auth_sessions.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class Calculation(Base):
    __tablename__ = "calculations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(64))
    input: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[CalculationStatus] = mapped_column(
        _stored_as_text(CalculationStatus, 16), default=CalculationStatus.QUEUED
    )
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    partial_result: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Bumped on every change that is published, so subscribers drop stale duplicates.
    version: Mapped[int] = mapped_column(Integer, default=0)
    # The worker that claimed the run, and when it last said the run is alive.
    worker_id: Mapped[str | None] = mapped_column(String(100), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # Split over many workers: how many shards (1 when not split), how many have stored
    # their partial result, and where it runs ("cpu" or "gpu"; None while QUEUED).
    shards: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    shards_done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    device: Mapped[str | None] = mapped_column(String(16), default=None)
    # Set for a calculation a schedule created: which one, and for which fire instant.
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None, index=True)
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # Set when a worker left it QUEUED because its owner had as many runs as allowed
    # (its message was dropped): the owner's next finishing run sends it again, and only
    # such rows, so a finish never re-sends what still has a message in the queue.
    parked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    __table_args__ = (
        Index("ix_calculations_owner_created", "owner_id", "created_at", "id"),
        Index("ix_calculations_status", "status"),
        # The owner's QUEUED and RUNNING rows alone: what the submit's active-limit count
        # and the claim's running-limit count read, however long the owner's history.
        Index(
            "ix_calculations_owner_active",
            "owner_id",
            "status",
            postgresql_where=text("status IN ('QUEUED', 'RUNNING')"),
            sqlite_where=text("status IN ('QUEUED', 'RUNNING')"),
        ),
        Index(
            "ix_calculations_parked",
            "owner_id",
            "created_at",
            "id",
            postgresql_where=text("parked_at IS NOT NULL"),
            sqlite_where=text("parked_at IS NOT NULL"),
        ),
    )

    def to_snapshot(self) -> CalculationSnapshot:
        return CalculationSnapshot(
            id=self.id,
            owner_id=self.owner_id,
            kind=self.kind,
            input=self.input,
            status=self.status,
            progress=self.progress,
            version=self.version,
            attempts=self.attempts,
            created_at=self.created_at,
            result=self.result,
            partial_result=self.partial_result,
            error=self.error,
            started_at=self.started_at,
            finished_at=self.finished_at,
            shards=self.shards,
            shards_done=self.shards_done,
            device=self.device,
            schedule_id=self.schedule_id,
            scheduled_for=self.scheduled_for,
        )


class ShardStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"


class CalculationShard(Base):
    """One shard of a split calculation: its own claim, progress and partial result."""

    __tablename__ = "calculation_shards"

    calculation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("calculations.id", ondelete="CASCADE"), primary_key=True
    )
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[ShardStatus] = mapped_column(
        _stored_as_text(ShardStatus, 16), default=ShardStatus.QUEUED
    )
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    partial: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(100), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    __table_args__ = (Index("ix_calculation_shards_status", "status"),)


class Worker(Base):
    """A live worker process, as it last reported itself."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # What it runs kernels on: "cpu" (the calculations queue) or "gpu" (calculations.gpu).
    device: Mapped[str] = mapped_column(String(16), default="cpu", server_default="cpu")


class ScheduleStatus(StrEnum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    FINISHED = "FINISHED"


class Schedule(Base):
    """Creates a calculation (``kind``, ``input``) at each instant of ``cron`` in
    ``timezone``, or once at ``run_at``. ``next_fire_at`` is the next instant, in UTC,
    while ACTIVE (null otherwise): the scheduler's work list."""

    __tablename__ = "schedules"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    kind: Mapped[str] = mapped_column(String(64))
    input: Mapped[dict[str, Any]] = mapped_column(JSONType)
    cron: Mapped[str | None] = mapped_column(String(200), default=None)
    run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    starts_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    misfire_policy: Mapped[str] = mapped_column(String(16), default="RUN_ONCE")
    status: Mapped[ScheduleStatus] = mapped_column(
        _stored_as_text(ScheduleStatus, 16), default=ScheduleStatus.ACTIVE
    )
    next_fire_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    skipped_runs: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_schedules_owner_created", "owner_id", "created_at", "id"),
        Index("ix_schedules_status_next_fire_at", "status", "next_fire_at"),
    )


class ScheduleFire(Base):
    """One fire instant of one schedule, written in the transaction that acts on it.
    The primary key is what makes a fire happen once, whatever the schedulers do."""

    __tablename__ = "schedule_fires"

    schedule_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("schedules.id", ondelete="CASCADE"), primary_key=True
    )
    fire_at: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    # CREATED (a calculation), SKIPPED_LIMIT, SKIPPED_DISABLED (the owner is disabled).
    outcome: Mapped[str] = mapped_column(String(24))
    calculation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("calculations.id", ondelete="CASCADE"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
