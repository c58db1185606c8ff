"""What the repository tests share: a session factory on each backend, an owner and
its calculations."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from crunchql.db.engine import create_engine, create_session_factory, unit_of_work
from crunchql.db.models import User
from crunchql.db.repositories import CalculationRepository
from tests.conftest import truncate

Factory = async_sessionmaker[AsyncSession]


@pytest.fixture
async def factory(database_url: str) -> AsyncIterator[Factory]:
    engine = create_engine(database_url)
    yield create_session_factory(engine)
    await engine.dispose()


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the emptied PostgreSQL database (the tests of its own statements)."""
    await truncate(postgres_url)
    engine = create_engine(postgres_url)
    yield engine
    await engine.dispose()


async def new_calculations(factory: Factory, owner: uuid.UUID, count: int) -> list[uuid.UUID]:
    """``count`` new QUEUED calculations of ``owner``, oldest first."""
    async with unit_of_work(factory) as session:
        repo = CalculationRepository(session)
        return [
            (await repo.create(owner_id=owner, kind="tiny", params={}, now=datetime.now(UTC))).id
            for _ in range(count)
        ]


async def new_owner(factory: Factory) -> uuid.UUID:
    """A new user's id."""
    async with unit_of_work(factory) as session:
        user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
        session.add(user)
        await session.flush()
        return user.id
