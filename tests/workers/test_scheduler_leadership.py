"""Scheduler leadership on the real PostgreSQL: one leader; when its connection dies
(as when its process is killed) a follower takes over, and the old leader's writes
are fenced off."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from crunchql.db.engine import create_engine, create_session_factory, read_only, unit_of_work
from crunchql.db.models import Schedule, User
from crunchql.db.repositories.schedule import ScheduleRepository
from crunchql.services.container import Limits
from crunchql.services.schedule_fire import FireConfig
from crunchql.services.schedules import changes
from crunchql.workers.scheduler import (
    LeadershipLostError,
    PostgresLeadership,
    Scheduler,
    SchedulerConfig,
)
from tests.conftest import truncate, wait_for

pytestmark = pytest.mark.postgres


class RecordingQueue:
    def __init__(self) -> None:
        self.sent: list[uuid.UUID] = []

    async def enqueue(self, calculation_id: uuid.UUID, work: object = None) -> None:
        self.sent.append(calculation_id)


async def test_one_leader_and_a_takeover_when_it_dies(postgres_url: str) -> None:
    first, second = PostgresLeadership(postgres_url), PostgresLeadership(postgres_url)
    engine = create_engine(postgres_url, pool_size=2)
    factory = create_session_factory(engine)
    admin = create_async_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        assert await first.try_acquire(asyncio.Event())
        assert not await second.try_acquire(asyncio.Event())
        async with read_only(factory) as session:
            leader = await ScheduleRepository(session).leader()
        assert leader is not None and leader["leader"] == first.identity[:63]
        async with unit_of_work(factory) as session:
            await first.fence(session)  # holds
        # The leader's process dies: its connection goes, and with it the lock.
        async with admin.connect() as connection:
            await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first._pid})
        await wait_for(lambda: second.try_acquire(asyncio.Event()), timeout=10, interval=0.2)
        with pytest.raises(LeadershipLostError):
            async with unit_of_work(factory) as session:
                await first.fence(session)
    finally:
        await first.release()
        await second.release()
        await engine.dispose()
        await admin.dispose()


async def test_a_change_wakes_the_sleeping_leader(postgres_url: str) -> None:
    """A schedule created elsewhere (another process's API) fires on time although the
    leader went to sleep for an hour with nothing due: the NOTIFY on commit woke it."""
    await truncate(postgres_url)
    leadership = PostgresLeadership(postgres_url)
    engine = create_engine(postgres_url, pool_size=2)
    factory = create_session_factory(engine)
    queue = RecordingQueue()
    scheduler = Scheduler(
        factory,
        queue,
        SchedulerConfig(fire=FireConfig(limits=Limits()), max_sleep=3600.0),
        leadership,
    )
    changes.forget(scheduler.wake)  # only the database may wake it here
    scheduler.start()
    try:
        await wait_for(lambda: _true(scheduler.leading), timeout=10)
        run_at = datetime.now(UTC) + timedelta(seconds=1)
        async with unit_of_work(factory) as session:
            user = User(id=uuid.uuid4(), email="wake@example.com", password_hash="x")
            session.add(user)
            await session.flush()
            session.add(
                Schedule(
                    owner_id=user.id,
                    kind="monteCarloPi",
                    input={"samples": 1},
                    run_at=run_at,
                    next_fire_at=run_at,
                )
            )
            await session.flush()
            await ScheduleRepository(session).notify_changed()
        await wait_for(lambda: _true(bool(queue.sent)), timeout=15)
    finally:
        await scheduler.stop()
        await engine.dispose()


async def _true(value: bool) -> bool:
    return value
