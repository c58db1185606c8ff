"""Sessions (one per login): their liveness is what every access token is checked
against, so revocation is always one conditional UPDATE that returns what it ended."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crunchql.db.models import AuthSession, User


def _live(now: datetime) -> Any:
    return (AuthSession.revoked_at.is_(None)) & (AuthSession.expires_at > now)


class AuthSessionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, auth_session: AuthSession) -> AuthSession:
        self.session.add(auth_session)
        await self.session.flush()
        return auth_session

    async def get(self, session_id: uuid.UUID) -> AuthSession | None:
        return await self.session.get(AuthSession, session_id, populate_existing=True)

    async def get_for_update(self, session_id: uuid.UUID) -> AuthSession | None:
        statement = select(AuthSession).where(AuthSession.id == session_id).with_for_update()
        return (
            await self.session.execute(statement.execution_options(populate_existing=True))
        ).scalar_one_or_none()

    async def list_live_for_user(self, user_id: uuid.UUID, now: datetime) -> list[AuthSession]:
        statement = (
            select(AuthSession)
            .where(AuthSession.user_id == user_id, _live(now))
            .order_by(AuthSession.created_at.desc(), AuthSession.id.desc())
        )
        return list((await self.session.execute(statement)).scalars())

    async def touch(self, session_id: uuid.UUID, now: datetime) -> None:
        await self.session.execute(
            update(AuthSession)
            .where(AuthSession.id == session_id, AuthSession.last_used_at < now)
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )

    async def revoke(
        self,
        now: datetime,
        reason: str,
        *,
        session_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None,
    ) -> list[uuid.UUID]:
        """End one session, or every live session of a user; the ids actually ended
        (none when already ended: two concurrent revocations end it once)."""
        statement = update(AuthSession).where(AuthSession.revoked_at.is_(None))
        if session_id is not None:
            statement = statement.where(AuthSession.id == session_id)
        if user_id is not None:
            statement = statement.where(AuthSession.user_id == user_id)
        if session_id is None and user_id is None:
            raise ValueError("revoke needs a session or a user")
        statement = statement.values(revoked_at=now, revoked_reason=reason).returning(
            AuthSession.id
        )
        return list((await self.session.execute(statement)).scalars())

    async def find_ended(self, session_ids: Sequence[uuid.UUID], now: datetime) -> set[uuid.UUID]:
        """Of ``session_ids``, those no longer usable: revoked, expired, deleted, or of
        a disabled account."""
        if not session_ids:
            return set()
        statement = (
            select(AuthSession.id)
            .join(User, User.id == AuthSession.user_id)
            .where(
                AuthSession.id.in_(session_ids),
                _live(now),
                User.is_active.is_(True),
            )
        )
        alive = set((await self.session.execute(statement)).scalars())
        return set(session_ids) - alive

    async def purge_ended(self, before: datetime) -> int:
        """Delete sessions that expired before ``before`` (their tokens go with them)."""
        result = await self.session.execute(
            delete(AuthSession).where(AuthSession.expires_at < before)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
