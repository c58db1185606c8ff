from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crunchql.db.models import RefreshToken


class RefreshTokenRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, token: RefreshToken) -> RefreshToken:
        self.session.add(token)
        await self.session.flush()
        return token

    async def get_by_hash_for_update(self, token_hash: str) -> RefreshToken | None:
        # FOR UPDATE serialises two concurrent rotations of the same token, so only
        # one of them wins and the other is seen as a reuse.
        statement = select(RefreshToken).where(RefreshToken.token_hash == token_hash)
        statement = statement.with_for_update()
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def mark_used(self, token: RefreshToken, when: datetime) -> bool:
        """Mark ``token`` used if nobody else did; False when it already was."""
        result = await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.id == token.id, RefreshToken.used_at.is_(None))
            .values(used_at=when)
        )
        return (result.rowcount or 0) == 1  # type: ignore[attr-defined]

    async def purge_expired(self, before: datetime) -> int:
        """Delete tokens that expired before ``before`` (no longer useful, even for
        detecting reuse: an expired token is refused anyway)."""
        result = await self.session.execute(
            delete(RefreshToken).where(RefreshToken.expires_at < before)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def revoke_family(self, family_id: uuid.UUID, when: datetime) -> None:
        await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=when)
        )
