"""Fixtures shared by the worker tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from crunchql.db.engine import create_engine, create_session_factory
from crunchql.pubsub.bus import InProcessEventBus
from crunchql.services.container import RunnerServices
from crunchql.workers.broker import CrunchRedisBroker, create_broker


@pytest.fixture
def broker(redis_url: str) -> Iterator[CrunchRedisBroker]:
    """A broker on the tests' Redis, its queues (and wake-up lists) empty before and after."""
    broker = create_broker(redis_url)
    broker.flush_all()
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture
async def services(database_url: str) -> AsyncIterator[RunnerServices]:
    """The runner's services on the test's database, with the in-process bus."""
    engine = create_engine(database_url)
    yield RunnerServices(create_session_factory(engine), InProcessEventBus())
    await engine.dispose()
