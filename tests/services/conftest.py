"""What the service tests share."""

from __future__ import annotations

import uuid

from crunchql.db.engine import unit_of_work
from crunchql.db.models import User
from crunchql.services.container import ServiceContainer


async def make_user(services: ServiceContainer) -> User:
    async with unit_of_work(services.session_factory) as session:
        user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
        session.add(user)
        await session.flush()
    return user
