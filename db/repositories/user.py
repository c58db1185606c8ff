from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crunchql.db.models import Role, User


@dataclass(frozen=True)
class UserPage:
    items: list[User]
    has_next_page: bool


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

    async def list_page(
        self, *, first: int, after: tuple[str, uuid.UUID] | None = None, search: str | None = None
    ) -> UserPage:
        """By e-mail then id, keyset-paginated; ``search`` is an e-mail prefix."""
        statement = select(User)
        if search:
            statement = statement.where(User.email.startswith(search.lower(), autoescape=True))
        if after is not None:
            email, last_id = after
            statement = statement.where(
                or_(User.email > email, and_(User.email == email, User.id > last_id))
            )
        statement = statement.order_by(User.email, User.id).limit(first + 1)
        rows = list((await self.session.execute(statement)).scalars())
        return UserPage(items=rows[:first], has_next_page=len(rows) > first)

    async def lock_active_admins(self, *, with_user: uuid.UUID | None = None) -> list[uuid.UUID]:
        """The active ADMINs, their rows held until the transaction ends. Every change
        that could remove an active ADMIN takes these locks first (in id order, so two
        of them never deadlock), so two admins demoting each other at once are
        serialised and the second sees the first's change.

        ``with_user``: that user's row too, in the same sweep (the change that follows
        is to it), so that every lock of the transaction is taken in id order, as a
        batch of submits takes its owners' (``db.batches``): otherwise a batch holding
        that user and waiting for an admin's row, and this transaction holding the
        admin's and waiting for that user's, would deadlock."""
        is_admin = and_(User.role == Role.ADMIN.value, User.is_active.is_(True))
        statement = (
            select(User.id, is_admin.label("is_admin"))
            .where(or_(is_admin, User.id == with_user) if with_user else is_admin)
            .order_by(User.id)
            .with_for_update()
        )
        rows = await self.session.execute(statement)
        return [row.id for row in rows if row.is_admin]

    async def update_fields(
        self, user_id: uuid.UUID, condition: Any = None, **values: Any
    ) -> User | None:
        """Set ``values`` on the user (when ``condition`` holds); the row as it is now."""
        statement = update(User).where(User.id == user_id)
        if condition is not None:
            statement = statement.where(condition)
        statement = statement.values(**values).returning(User)
        result = await self.session.execute(
            statement.execution_options(populate_existing=True, synchronize_session=False)
        )
        return result.scalar_one_or_none()

    async def record_login(self, user_id: uuid.UUID, now: datetime) -> None:
        await self.session.execute(
            update(User)
            .where(User.id == user_id)
            .values(last_login_at=now)
            .execution_options(synchronize_session=False)
        )
