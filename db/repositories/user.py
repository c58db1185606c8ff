from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crunchql.db.models import User


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_id(self, user_id: uuid.UUID) -> User | None:
        return await self.session.get(User, user_id)

    async def get_by_email(self, email: str) -> User | None:
        statement = select(User).where(func.lower(User.email) == email.lower())
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def list_by_ids(self, ids: Sequence[uuid.UUID]) -> list[User]:
        if not ids:
            return []
        result = await self.session.execute(select(User).where(User.id.in_(ids)))
        return list(result.scalars())

    async def lock(self, user_id: uuid.UUID) -> None:
        """Hold the user's row until the transaction ends (no-op on SQLite)."""
        await self.session.execute(select(User.id).where(User.id == user_id).with_for_update())

    async def add(self, user: User) -> User:
        self.session.add(user)
        await self.session.flush()
        return user
