"""The audit log: append, read newest first with filters, purge past retention."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from crunchql.db.models import AuditEvent


@dataclass(frozen=True)
class AuditPage:
    items: list[AuditEvent]
    has_next_page: bool


class AuditRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, event: AuditEvent) -> AuditEvent:
        self.session.add(event)
        await self.session.flush()
        return event

    async def list(
        self,
        *,
        first: int,
        after: tuple[datetime, uuid.UUID] | None = None,
        action: str | None = None,
        actor_id: uuid.UUID | None = None,
        target_user_id: uuid.UUID | None = None,
    ) -> AuditPage:
        """Newest first, keyset-paginated on (at, id)."""
        statement = select(AuditEvent)
        if action is not None:
            statement = statement.where(AuditEvent.action == action)
        if actor_id is not None:
            statement = statement.where(AuditEvent.actor_id == actor_id)
        if target_user_id is not None:
            statement = statement.where(AuditEvent.target_user_id == target_user_id)
        if after is not None:
            at, last_id = after
            statement = statement.where(
                or_(AuditEvent.at < at, and_(AuditEvent.at == at, AuditEvent.id < last_id))
            )
        statement = statement.order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        rows = list((await self.session.execute(statement.limit(first + 1))).scalars())
        return AuditPage(items=rows[:first], has_next_page=len(rows) > first)

    async def purge(self, before: datetime) -> int:
        """Delete events older than ``before`` (the retention period)."""
        result = await self.session.execute(delete(AuditEvent).where(AuditEvent.at < before))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
