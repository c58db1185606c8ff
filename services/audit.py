"""The audit log: one row per security-relevant action, written in the transaction of
the action itself (so a rolled-back action leaves no record and a committed one always
has one), and the same record as a structured log line once committed."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crunchql.core.errors import BadUserInputError
from crunchql.db.engine import after_commit, read_only, unit_of_work
from crunchql.db.models import AuditAction, AuditEvent
from crunchql.db.repositories import (
    AuditPage,
    AuditRepository,
    AuthSessionRepository,
    RefreshTokenRepository,
)

logger = structlog.get_logger("crunchql.audit")

MAX_PAGE_SIZE = 100
MAX_USER_AGENT = 512
MAX_ADDRESS = 64
MAX_DETAIL_TEXT = 320
# What details may hold: plain facts about the action. Anything else (a password, a
# token, a hash, whatever a future caller passes by mistake) is refused loudly.
ALLOWED_DETAILS = frozenset(
    {"email", "reason", "sessionId", "sessions", "from", "to", "calculationId", "ownerId"}
)


@dataclass(frozen=True)
class ClientInfo:
    """Where a request came from, as far as the audit log is concerned."""

    address: str | None = None
    user_agent: str | None = None

    @classmethod
    def of(cls, address: str | None, user_agent: str | None) -> ClientInfo:
        return cls(
            address=address[:MAX_ADDRESS] if address else None,
            user_agent=user_agent[:MAX_USER_AGENT] if user_agent else None,
        )


CLI = ClientInfo(address="cli", user_agent="crunchql-cli")


def _clean(details: dict[str, Any]) -> dict[str, Any]:
    unknown = set(details) - ALLOWED_DETAILS
    if unknown:
        raise ValueError(f"audit details may not hold {sorted(unknown)}")
    return {
        key: value[:MAX_DETAIL_TEXT] if isinstance(value, str) else value
        for key, value in details.items()
    }


def _log_line(event: AuditEvent) -> None:
    logger.info(
        "audit",
        audit_id=str(event.id),
        action=event.action,
        actor_id=str(event.actor_id) if event.actor_id else None,
        target_user_id=str(event.target_user_id) if event.target_user_id else None,
        address=event.address,
        user_agent=event.user_agent,
        details=event.details,
    )


async def record(
    session: AsyncSession,
    action: AuditAction,
    client: ClientInfo,
    *,
    actor_id: uuid.UUID | None = None,
    target_user_id: uuid.UUID | None = None,
    **details: Any,
) -> AuditEvent:
    """Add an event to the caller's transaction; logged once that commits."""
    event = await AuditRepository(session).add(
        AuditEvent(
            id=uuid.uuid4(),
            at=datetime.now(UTC),
            action=action.value,
            actor_id=actor_id,
            target_user_id=target_user_id,
            address=client.address,
            user_agent=client.user_agent,
            details=_clean(details),
        )
    )

    async def log() -> None:
        _log_line(event)

    after_commit(session, log)
    return event


async def record_alone(
    factory: async_sessionmaker[AsyncSession],
    action: AuditAction,
    client: ClientInfo,
    *,
    actor_id: uuid.UUID | None = None,
    target_user_id: uuid.UUID | None = None,
    **details: Any,
) -> None:
    """An event with no other write to join (a failed login): its own transaction."""
    async with unit_of_work(factory) as session:
        await record(
            session, action, client, actor_id=actor_id, target_user_id=target_user_id, **details
        )


async def apply_retention(
    session: AsyncSession, now: datetime, *, audit_retention: timedelta
) -> tuple[int, int]:
    """Retention, in the caller's transaction: audit events older than
    ``audit_retention`` and sessions expired for over a day (with their refresh
    tokens). Returns (events, sessions) deleted."""
    events = await AuditRepository(session).purge(now - audit_retention)
    await RefreshTokenRepository(session).purge_expired(now - timedelta(days=1))
    sessions = await AuthSessionRepository(session).purge_ended(now - timedelta(days=1))
    return events, sessions


async def purge_expired_records(
    factory: async_sessionmaker[AsyncSession], *, audit_retention: timedelta
) -> tuple[int, int]:
    async with unit_of_work(factory) as session:
        return await apply_retention(session, datetime.now(UTC), audit_retention=audit_retention)


async def list_events(
    factory: async_sessionmaker[AsyncSession],
    *,
    first: int,
    after: tuple[datetime, uuid.UUID] | None,
    action: AuditAction | None,
    actor_id: uuid.UUID | None,
    target_user_id: uuid.UUID | None,
) -> AuditPage:
    if not 0 <= first <= MAX_PAGE_SIZE:
        raise BadUserInputError(
            f"first must be between 0 and {MAX_PAGE_SIZE} (got {first}).", field="first"
        )
    async with read_only(factory) as session:
        return await AuditRepository(session).list(
            first=first,
            after=after,
            action=action.value if action is not None else None,
            actor_id=actor_id,
            target_user_id=target_user_id,
        )
