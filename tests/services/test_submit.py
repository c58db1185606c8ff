"""submit(): the row is committed first, then the job's message and the "created" event
go out together; a send that fails is not the caller's failure (the workers' sweeper
re-sends unclaimed calculations, list views re-read on a resync)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import pytest

from crunchql.core.errors import RateLimitedError
from crunchql.core.lifecycle import CalculationEvent
from crunchql.db.engine import create_engine, read_only
from crunchql.db.models import CalculationStatus
from crunchql.db.repositories import CalculationRepository
from crunchql.pubsub.bus import InProcessEventBus
from crunchql.services import calculations
from crunchql.services.container import Limits, ServiceContainer
from tests.services.conftest import make_services, make_user

TINY = {"samples": 1000, "seed": 1}


class RecordingQueue:
    """Sees, at each send, whether the row was already committed (another session
    reads it); fails every send when ``broken``."""

    def __init__(self) -> None:
        self.services: ServiceContainer | None = None
        self.sent: list[tuple[uuid.UUID, bool]] = []
        self.broken = False

    async def enqueue(self, calculation_id: uuid.UUID, work: object = None) -> None:
        assert self.services is not None
        async with read_only(self.services.session_factory) as session:
            stored = await CalculationRepository(session).read(calculation_id)
        self.sent.append((calculation_id, stored is not None))
        if self.broken:
            raise ConnectionError("the queue is down")


class RecordingBus(InProcessEventBus):
    def __init__(self) -> None:
        super().__init__()
        self.published: list[CalculationEvent] = []
        self.broken = False

    async def publish(self, event: CalculationEvent) -> None:
        self.published.append(event)
        if self.broken:
            raise ConnectionError("the bus is down")


@pytest.fixture
async def services(database_url: str) -> AsyncIterator[ServiceContainer]:
    engine = create_engine(database_url)
    queue = RecordingQueue()
    services = make_services(
        engine,
        bus=RecordingBus(),
        queue=queue,
        limits=Limits(rate_limits=False, max_active_calculations=2),
    )
    queue.services = services
    yield services
    await engine.dispose()


async def test_the_message_and_the_created_event_follow_the_commit(
    services: ServiceContainer,
) -> None:
    user = await make_user(services)
    row = await calculations.submit(services, user, "monteCarloPi", TINY)
    assert services.queue.sent == [(row.id, True)]  # type: ignore[attr-defined]
    [event] = services.bus.published  # type: ignore[attr-defined]
    assert (event.id, event.owner_id, event.status) == (row.id, user.id, CalculationStatus.QUEUED)


async def test_a_failed_send_does_not_fail_the_submit(
    services: ServiceContainer, caplog: pytest.LogCaptureFixture
) -> None:
    user = await make_user(services)
    services.queue.broken = True  # type: ignore[attr-defined]
    services.bus.broken = True  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, logger="crunchql.services.calculations"):
        row = await calculations.submit(services, user, "monteCarloPi", TINY)
    async with read_only(services.session_factory) as session:
        stored = await CalculationRepository(session).read(row.id)
    assert stored is not None and stored.status is CalculationStatus.QUEUED
    assert "the job's message was not sent" in caplog.text
    assert "the created event was not sent" in caplog.text


async def test_the_cap_refuses_and_sends_nothing(services: ServiceContainer) -> None:
    user = await make_user(services)
    # Parallel submits of one owner: exactly the cap's worth accepted, on both backends.
    results = await asyncio.gather(
        *(calculations.submit(services, user, "monteCarloPi", TINY) for _ in range(6)),
        return_exceptions=True,
    )
    accepted = [each for each in results if not isinstance(each, BaseException)]
    assert len(accepted) == 2
    assert all(isinstance(each, RateLimitedError) for each in results if each not in accepted)
    assert sorted(sent for sent, _ in services.queue.sent) == sorted(r.id for r in accepted)  # type: ignore[attr-defined]
