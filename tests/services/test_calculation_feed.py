"""myCalculationUpdates' core: one feed per user, routed by owner on the bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import update

from crunchql.core.errors import BadUserInputError
from crunchql.core.lifecycle import CalculationEvent
from crunchql.db.engine import create_engine, unit_of_work
from crunchql.db.models import Calculation, CalculationStatus, User
from crunchql.services import calculation_feed, calculations
from crunchql.services.container import Limits, ServiceContainer
from tests.services.conftest import make_services, make_user


@pytest.fixture
async def services(database_url: str) -> AsyncIterator[ServiceContainer]:
    engine = create_engine(database_url)
    yield make_services(engine, limits=Limits(rate_limits=False, max_active_calculations=100))
    await engine.dispose()


class Feed:
    """Runs watch_own() in the background and hands over what it yields."""

    def __init__(self, services: ServiceContainer, user: User, **filters: Any) -> None:
        self.updates: asyncio.Queue[tuple[str, str, str, float]] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(services, user, filters))

    async def _run(self, services: ServiceContainer, user: User, filters: dict[str, Any]) -> None:
        async for shown in calculation_feed.watch_own(services, user, **filters):
            await self.updates.put((str(shown.id), shown.kind, shown.status, shown.progress))

    async def started(self, services: ServiceContainer) -> None:
        # Subscribed once the bus counts it: only then is no event missed.
        for _ in range(500):
            if services.bus.subscriber_count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the feed did not subscribe")

    async def next(self) -> tuple[str, str, str, float]:
        return await asyncio.wait_for(self.updates.get(), 5)

    async def nothing_more(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert self.updates.empty(), self.updates.get_nowait()

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def running(calculation: Calculation, **values: Any) -> CalculationEvent:
    calculation.status = CalculationStatus.RUNNING
    calculation.attempts = 1
    calculation.version = 1
    calculation.started_at = datetime.now(UTC)
    for key, value in values.items():
        setattr(calculation, key, value)
    return CalculationEvent.status_change(calculation.to_snapshot())


def tick(calculation: Calculation, progress: float, version: int) -> CalculationEvent:
    return CalculationEvent.progress_tick(
        calculation.id, attempt=1, version=version, progress=progress, partial_result=None,
        owner_id=calculation.owner_id,
    )  # fmt: skip


async def test_created_status_progress_and_result_of_every_own_calculation(
    services: ServiceContainer,
) -> None:
    user, other = await make_user(services), await make_user(services)
    feed = Feed(services, user)
    await feed.started(services)
    first = await calculations.submit(services, user, "monteCarloPi", {"samples": 100})
    second = await calculations.submit(services, user, "primeCount", {"limit": 1000})
    await calculations.submit(services, other, "primeCount", {"limit": 1000})  # not theirs
    assert await feed.next() == (str(first.id), "monteCarloPi", "QUEUED", 0.0)
    assert await feed.next() == (str(second.id), "primeCount", "QUEUED", 0.0)
    key = str(first.id)
    await services.bus.publish(running(first))
    assert await feed.next() == (key, "monteCarloPi", "RUNNING", 0.0)
    await services.bus.publish(tick(first, 0.3, 2))
    assert await feed.next() == (key, "monteCarloPi", "RUNNING", 0.3)
    # Unread ticks of one calculation coalesce (latest wins; a stale one and a duplicate
    # change nothing), but never stand in for another calculation's.
    await services.bus.publish(running(second))
    for progress, version in [(0.2, 3), (0.3, 3), (0.6, 4)]:
        await services.bus.publish(tick(first, progress, version))
    await services.bus.publish(tick(second, 0.5, 2))
    await services.bus.publish(tick(first, 0.7, 5))
    assert await feed.next() == (str(second.id), "primeCount", "RUNNING", 0.0)
    assert await feed.next() == (key, "monteCarloPi", "RUNNING", 0.6)
    assert await feed.next() == (str(second.id), "primeCount", "RUNNING", 0.5)
    assert await feed.next() == (key, "monteCarloPi", "RUNNING", 0.7)
    first.status, first.progress, first.version = CalculationStatus.SUCCEEDED, 1.0, 5
    first.result = {"estimate": 3.1, "standardError": 0.1, "samples": 100}
    await services.bus.publish(CalculationEvent.status_change(first.to_snapshot()))
    assert await feed.next() == (key, "monteCarloPi", "SUCCEEDED", 1.0)
    await feed.nothing_more()  # and it does not complete after a terminal event
    assert not feed.task.done()
    await feed.stop()
    assert services.bus.subscriber_count == 0


async def test_filters_by_kind_and_status(services: ServiceContainer) -> None:
    user = await make_user(services)
    by_kind = Feed(services, user, kind="primeCount")
    by_status = Feed(services, user, status=CalculationStatus.RUNNING)
    for _ in range(500):
        if services.bus.subscriber_count == 2:
            break
        await asyncio.sleep(0.01)
    pi = await calculations.submit(services, user, "monteCarloPi", {"samples": 100})
    primes = await calculations.submit(services, user, "primeCount", {"limit": 1000})
    assert await by_kind.next() == (str(primes.id), "primeCount", "QUEUED", 0.0)
    await services.bus.publish(running(pi))
    assert await by_status.next() == (str(pi.id), "monteCarloPi", "RUNNING", 0.0)
    await by_kind.nothing_more()
    await by_status.nothing_more()
    with pytest.raises(BadUserInputError):
        async for _ in calculation_feed.watch_own(services, user, kind="nope"):
            pass
    await by_kind.stop()
    await by_status.stop()


async def test_a_resync_rereads_what_changed_unseen(services: ServiceContainer) -> None:
    user = await make_user(services)
    feed = Feed(services, user)
    await feed.started(services)
    calculation = await calculations.submit(services, user, "monteCarloPi", {"samples": 100})
    assert (await feed.next())[2] == "QUEUED"
    # Finished while the bus was away: no event, only the database knows.
    async with unit_of_work(services.session_factory) as session:
        await session.execute(
            update(Calculation)
            .where(Calculation.id == calculation.id)
            .values(status=CalculationStatus.SUCCEEDED, progress=1.0, version=3, attempts=1)
        )
    services.bus.resync_all()  # what the bus does when it reconnects to Redis
    assert await feed.next() == (str(calculation.id), "monteCarloPi", "SUCCEEDED", 1.0)
    await feed.nothing_more()  # an unchanged row is not sent again
    await feed.stop()


async def test_count_and_resubmit(services: ServiceContainer) -> None:
    user, other = await make_user(services), await make_user(services)
    first = await calculations.submit(services, user, "monteCarloPi", {"samples": 100})
    await calculations.submit(services, user, "primeCount", {"limit": 10})
    again = await calculations.resubmit(services, user, str(first.id))
    assert again.id != first.id and again.input == first.input  # the seed included
    count = calculations.count_own
    assert await count(services, user, status=None, kind=None) == 3
    assert await count(services, user, status=None, kind="monteCarloPi") == 2
    assert await count(services, user, status=CalculationStatus.RUNNING, kind=None) == 0
    assert await count(services, other, status=None, kind=None) == 0


async def test_a_list_of_fifty_running_calculations_is_one_subscription(
    services: ServiceContainer,
) -> None:
    user = await make_user(services)
    feed = Feed(services, user)
    await feed.started(services)
    rows = []
    updates = []
    for _ in range(50):  # in step with the reader: a mailbox holds at most 64 events
        rows.append(await calculations.submit(services, user, "monteCarloPi", {"samples": 100}))
        updates.append(await feed.next())
    for row in rows:
        await services.bus.publish(running(row))
        updates.append(await feed.next())
        await services.bus.publish(tick(row, 0.5, 2))
        updates.append(await feed.next())
    assert services.bus.subscriber_count == 1
    assert {u[0] for u in updates if u[2:] == ("RUNNING", 0.5)} == {str(r.id) for r in rows}
    await feed.stop()
