"""myCalculationUpdates' core: one feed per user, routed by owner on the bus."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import update

from crunchql.auth.passwords import PasswordHasher
from crunchql.auth.rate_limit import DisabledRateLimiter
from crunchql.auth.tokens import TokenService
from crunchql.core.errors import BadUserInputError
from crunchql.db.engine import create_engine, create_session_factory, unit_of_work
from crunchql.db.models import Calculation, CalculationStatus, User
from crunchql.pubsub.bus import RESYNC, InProcessEventBus
from crunchql.services import calculation_feed, calculations
from crunchql.services.container import Limits, Services


class NoQueue:
    async def enqueue(self, calculation_id: uuid.UUID) -> None:
        return None


@pytest.fixture
async def services(database_url: str) -> AsyncIterator[Services]:
    engine = create_engine(database_url)
    yield Services(
        session_factory=create_session_factory(engine),
        hasher=PasswordHasher(rounds=4),
        tokens=TokenService(secret="s" * 40),
        rate_limiter=DisabledRateLimiter(),
        bus=InProcessEventBus(),
        queue=NoQueue(),
        limits=Limits(rate_limits=False),
    )
    await engine.dispose()


async def make_user(services: Services) -> User:
    async with unit_of_work(services.session_factory) as session:
        user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
        session.add(user)
        await session.flush()
    return user


class Feed:
    """Runs watch_own() in the background and hands over what it yields."""

    def __init__(self, services: Services, user: User, **filters: Any) -> None:
        self.updates: asyncio.Queue[tuple[str, str, str, float]] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(services, user, filters))

    async def _run(self, services: Services, user: User, filters: dict[str, Any]) -> None:
        async for row, overrides in calculation_feed.watch_own(services, user, **filters):
            progress = (overrides or {}).get("progress", row.progress)
            await self.updates.put((str(row.id), row.kind, row.status, progress))

    async def started(self, services: Services) -> None:
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


def running(calculation: Calculation, **values: Any) -> dict[str, Any]:
    calculation.status = "RUNNING"
    calculation.attempts = 1
    calculation.version = 1
    calculation.started_at = datetime.now(UTC)
    for key, value in values.items():
        setattr(calculation, key, value)
    return calculations.status_event(calculation)


async def test_created_status_progress_and_result_of_every_own_calculation(
    services: Services,
) -> None:
    user, other = await make_user(services), await make_user(services)
    feed = Feed(services, user)
    await feed.started(services)
    first = await calculations.submit(services, user, "monteCarloPi", {"samples": 100})
    second = await calculations.submit(services, user, "primeCount", {"limit": 1000})
    await calculations.submit(services, other, "primeCount", {"limit": 1000})  # not theirs
    assert await feed.next() == (str(first.id), "monteCarloPi", "QUEUED", 0.0)
    assert await feed.next() == (str(second.id), "primeCount", "QUEUED", 0.0)
    key, owner = str(first.id), str(user.id)
    await services.bus.publish(key, running(first), owner=owner)
    assert await feed.next() == (key, "monteCarloPi", "RUNNING", 0.0)
    for progress, version in [(0.3, 2), (0.2, 3), (0.3, 3), (0.6, 4)]:  # one stale, one dup
        event = {"id": key, "status": "RUNNING", "progress": progress, "version": version}
        await services.bus.publish(key, event, owner=owner)
    assert await feed.next() == (key, "monteCarloPi", "RUNNING", 0.3)
    assert await feed.next() == (key, "monteCarloPi", "RUNNING", 0.6)
    first.status, first.progress, first.version = "SUCCEEDED", 1.0, 5
    first.result = {"estimate": 3.1, "standardError": 0.1, "samples": 100}
    await services.bus.publish(key, calculations.status_event(first), owner=owner)
    assert await feed.next() == (key, "monteCarloPi", "SUCCEEDED", 1.0)
    await feed.nothing_more()  # and it does not complete after a terminal event
    assert not feed.task.done()
    await feed.stop()
    assert services.bus.subscriber_count == 0


async def test_filters_by_kind_and_status(services: Services) -> None:
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
    await services.bus.publish(str(pi.id), running(pi), owner=str(user.id))
    assert await by_status.next() == (str(pi.id), "monteCarloPi", "RUNNING", 0.0)
    await by_kind.nothing_more()
    await by_status.nothing_more()
    with pytest.raises(BadUserInputError):
        async for _ in calculation_feed.watch_own(services, user, kind="nope"):
            pass
    await by_kind.stop()
    await by_status.stop()


async def test_a_resync_rereads_what_changed_unseen(services: Services) -> None:
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
            .values(status="SUCCEEDED", progress=1.0, version=3, attempts=1)
        )
    await services.bus.publish(f"user:{user.id}", RESYNC)
    assert await feed.next() == (str(calculation.id), "monteCarloPi", "SUCCEEDED", 1.0)
    await feed.nothing_more()  # an unchanged row is not sent again
    await feed.stop()


async def test_count_and_resubmit(services: Services) -> None:
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
    services: Services,
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
        await services.bus.publish(str(row.id), running(row), owner=str(user.id))
        updates.append(await feed.next())
        event = {"id": str(row.id), "status": "RUNNING", "progress": 0.5, "version": 2}
        await services.bus.publish(str(row.id), event, owner=str(user.id))
        updates.append(await feed.next())
    assert services.bus.subscriber_count == 1
    assert {u[0] for u in updates if u[2:] == ("RUNNING", 0.5)} == {str(r.id) for r in rows}
    await feed.stop()
