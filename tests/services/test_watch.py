"""calculationUpdates' core: ordering, duplicates, snapshots, re-reads."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import update

from crunchql.auth.passwords import PasswordHasher
from crunchql.auth.rate_limit import DisabledRateLimiter
from crunchql.auth.tokens import TokenService
from crunchql.db.engine import create_engine, create_session_factory, unit_of_work
from crunchql.db.models import Calculation, User
from crunchql.pubsub.bus import RESYNC, InProcessEventBus
from crunchql.services import calculations
from crunchql.services.container import Limits, Services
from tests.conftest import wait_for


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


async def make(services: Services, **values: Any) -> tuple[User, Calculation]:
    async with unit_of_work(services.session_factory) as session:
        user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
        session.add(user)
        await session.flush()
        calculation = Calculation(
            owner_id=user.id, kind="monteCarloPi", input={"samples": 10, "seed": 1}, **values
        )
        session.add(calculation)
        await session.flush()
    return user, calculation


class Watcher:
    """Runs watch() in the background and hands over what it yields."""

    def __init__(self, services: Services, user: User, calculation_id: uuid.UUID) -> None:
        self.updates: asyncio.Queue[tuple[Calculation, Any] | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(services, user, str(calculation_id)))

    async def _run(self, services: Services, user: User, raw_id: str) -> None:
        async for row, overrides in calculations.watch(services, user, raw_id):
            # Copy what matters now: the row object is updated in place later.
            progress = (overrides or {}).get("progress", row.progress)
            await self.updates.put((row.status, progress, row.attempts, row.result))  # type: ignore[arg-type]
        await self.updates.put(None)

    async def next(self) -> Any:
        return await asyncio.wait_for(self.updates.get(), 5)

    async def nothing_more(self) -> None:
        # A negative can only be checked over a window: give stray events a chance.
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert self.updates.empty()


def snapshot(calculation: Calculation, **values: Any) -> dict[str, Any]:
    for key, value in values.items():
        setattr(calculation, key, value)
    return calculations.status_event(calculation)


async def test_events_in_order_duplicates_dropped_terminal_completes(services: Services) -> None:
    user, calculation = await make(services)
    watcher = Watcher(services, user, calculation.id)
    assert await watcher.next() == ("QUEUED", 0.0, 0, None)
    key = str(calculation.id)
    running = snapshot(
        calculation, status="RUNNING", attempts=1, version=1, started_at=datetime.now(UTC)
    )
    await services.bus.publish(key, running)
    assert await watcher.next() == ("RUNNING", 0.0, 1, None)
    await services.bus.publish(key, running)  # duplicate
    for progress, version in [(0.2, 2), (0.1, 3), (0.2, 3), (0.5, 4)]:  # one stale, one dup
        await services.bus.publish(
            key, {"id": key, "status": "RUNNING", "progress": progress, "version": version}
        )
    assert await watcher.next() == ("RUNNING", 0.2, 1, None)
    assert await watcher.next() == ("RUNNING", 0.5, 1, None)
    await watcher.nothing_more()
    done = snapshot(
        calculation, status="SUCCEEDED", progress=1.0, version=5,
        result={"estimate": 3.0, "standardError": 0.1, "samples": 10},
        finished_at=datetime.now(UTC),
    )  # fmt: skip
    await services.bus.publish(key, done)
    assert await watcher.next() == ("SUCCEEDED", 1.0, 1, done["result"])
    assert await watcher.next() is None  # completed
    assert services.bus.subscriber_count == 0  # and let go of its subscription


async def test_a_takeover_is_newer_even_with_a_lower_version(services: Services) -> None:
    user, calculation = await make(services, status="RUNNING", attempts=1, version=40, progress=0.3)
    watcher = Watcher(services, user, calculation.id)
    assert await watcher.next() == ("RUNNING", 0.3, 1, None)
    await services.bus.publish(
        str(calculation.id), snapshot(calculation, status="RUNNING", attempts=2, version=12)
    )
    status, progress, attempts, _ = await watcher.next()
    assert (status, attempts) == ("RUNNING", 2)
    assert progress == 0.3  # never a step back, although the new run starts from zero
    watcher.task.cancel()


async def test_resync_and_big_results_are_read_from_the_database(services: Services) -> None:
    user, calculation = await make(services, status="RUNNING", attempts=1, version=1)
    watcher = Watcher(services, user, calculation.id)
    await watcher.next()
    big = {"width": 4096, "height": 4096, "insideFraction": 0.2, "png": "x" * 100_000}
    async with unit_of_work(services.session_factory) as session:
        await session.execute(
            update(Calculation)
            .where(Calculation.id == calculation.id)
            .values(status="SUCCEEDED", progress=1.0, version=9, result=big)
        )
    # The change reached the database, but its event was lost: a resync finds it.
    await services.bus.publish(str(calculation.id), RESYNC)
    assert await watcher.next() == ("SUCCEEDED", 1.0, 1, big)
    event = snapshot(calculation, status="SUCCEEDED", result=big)
    assert event["reload"] and "result" not in event  # too big to travel on pub/sub


async def test_finished_calculation_yields_once(services: Services) -> None:
    user, calculation = await make(services, status="FAILED", error="boom", version=3)
    watcher = Watcher(services, user, calculation.id)
    assert (await watcher.next())[0] == "FAILED"
    assert await watcher.next() is None


async def test_someone_elses_calculation_is_not_found(services: Services) -> None:
    _owner, calculation = await make(services)
    stranger, _ = await make(services)
    with pytest.raises(calculations.NotFoundError):
        async for _ in calculations.watch(services, stranger, str(calculation.id)):
            pass
    assert services.bus.subscriber_count == 0


async def test_an_idle_subscription_does_not_poll_the_database(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finding: every idle subscription re-read the database every 30 s. It now
    waits for its lifetime and re-reads only on a resync (one per bus reconnect)."""
    from crunchql.pubsub.bus import Subscription

    waits: list[float | None] = []
    original_get = Subscription.get

    async def recording_get(self: Subscription, timeout: float | None = None) -> Any:
        waits.append(timeout)
        return await original_get(self, timeout)

    reads = 0
    original_get_row = calculations.CalculationRepository.get

    async def counting_get(self: Any, calculation_id: uuid.UUID) -> Any:
        nonlocal reads
        reads += 1
        return await original_get_row(self, calculation_id)

    monkeypatch.setattr(Subscription, "get", recording_get)
    monkeypatch.setattr(calculations.CalculationRepository, "get", counting_get)
    user, calculation = await make(services, status="QUEUED")
    watcher = Watcher(services, user, calculation.id)
    assert (await watcher.next())[0] == "QUEUED"

    async def waiting() -> bool:
        return bool(waits)

    await wait_for(waiting, timeout=5)
    assert reads == 1
    assert all(w is not None and w > 6 * 3600 - 60 for w in waits)  # its whole lifetime
    await services.bus.publish(str(calculation.id), RESYNC)  # e.g. the bus reconnected

    async def reread() -> bool:
        return reads == 2 and len(waits) == 2

    await wait_for(reread, timeout=5)
    watcher.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher.task
    assert reads == 2
