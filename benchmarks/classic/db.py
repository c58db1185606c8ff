"""Tables and engines of the classic service (SQLAlchemy 2 ORM, PostgreSQL)."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Index, String, Text, create_engine
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TERMINAL = frozenset({"SUCCEEDED", "FAILED"})


def database_url() -> str:
    """postgresql://user@host:port/name (without a driver: each side picks its own)."""
    return os.environ.get("CLASSIC_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/classic")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(100))
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Calculation(Base):
    __tablename__ = "calculations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(64))
    input: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), default="QUEUED")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    __table_args__ = (Index("ix_calculations_owner_created", "owner_id", "created_at"),)


def async_engine() -> AsyncEngine:
    """The API's engine: asyncpg, SQLAlchemy's default pool (5 + 10 overflow)."""
    return create_async_engine(database_url().replace("postgresql://", "postgresql+asyncpg://"))


def sync_engine() -> Engine:
    """The worker's engine: psycopg 3, synchronous, as Celery tasks are."""
    return create_engine(database_url().replace("postgresql://", "postgresql+psycopg://"))


def create_schema() -> None:
    engine = sync_engine()
    Base.metadata.create_all(engine)
    engine.dispose()
