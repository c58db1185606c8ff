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

from crunchql.core.lifecycle import CalculationEvent, CalculationSnapshot, CalculationStatus
from crunchql.db.engine import create_engine, unit_of_work
from crunchql.db.models import Calculation, User
from crunchql.pubsub.bus import InProcessEventBus
from crunchql.services import calculations
from crunchql.services.container import ServiceContainer
from tests.conftest import wait_for
from tests.services.conftest import make_services


@pytest.fixture
async def services(database_url: str) -> AsyncIterator[ServiceContainer]:
    engine = create_engine(database_url)
    yield make_services(engine)
    await engine.dispose()


async def make(services: ServiceContainer, **values: Any) -> tuple[User, Calculation]:
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

    def __init__(self, services: ServiceContainer, user: User, calculation_id: uuid.UUID) -> None:
        self.updates: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue()
        self.seen: list[CalculationSnapshot] = []
        self.task = asyncio.create_task(self._run(services, user, str(calculation_id)))

    async def _run(self, services: ServiceContainer, user: User, raw_id: str) -> None:
        async for shown in calculations.watch(services, user, raw_id):
            self.seen.append(shown)
            await self.updates.put((shown.status, shown.progress, shown.attempts, shown.result))
        await self.updates.put(None)

    async def next(self) -> Any:
        return await asyncio.wait_for(self.updates.get(), 5)

    async def nothing_more(self) -> None:
        # A negative can only be checked over a window: give stray events a chance.
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert self.updates.empty()


def status_change(calculation: Calculation, **values: Any) -> CalculationEvent:
    for key, value in values.items():
        setattr(calculation, key, value)
    return CalculationEvent.status_change(calculation.to_snapshot())


def tick(calculation: Calculation, progress: float, version: int) -> CalculationEvent:
    return CalculationEvent.progress_tick(
        calculation.id, attempt=1, version=version, progress=progress, partial_result=None
    )


async def test_events_in_order_duplicates_dropped_terminal_completes(
    services: ServiceContainer,
) -> None:
    user, calculation = await make(services)
    watcher = Watcher(services, user, calculation.id)
    assert await watcher.next() == ("QUEUED", 0.0, 0, None)
    running = status_change(
        calculation,
        status=CalculationStatus.RUNNING,
        attempts=1,
        version=1,
        started_at=datetime.now(UTC),
    )
    await services.bus.publish(running)
    assert await watcher.next() == ("RUNNING", 0.0, 1, None)
    await services.bus.publish(running)  # duplicate
    for progress, version in [(0.2, 2), (0.1, 3), (0.2, 3), (0.5, 4)]:  # one stale, one dup
        await services.bus.publish(tick(calculation, progress, version))
    # Published faster than the watcher reads: it is shown the latest state once.
    assert await watcher.next() == ("RUNNING", 0.5, 1, None)
    await watcher.nothing_more()
    for progress, version in [(0.2, 3), (0.5, 4)]:  # a stale tick, a duplicate, read one by one
        await services.bus.publish(tick(calculation, progress, version))
        await watcher.nothing_more()
    done = status_change(
        calculation, status=CalculationStatus.SUCCEEDED, progress=1.0, version=5,
        result={"estimate": 3.0, "standardError": 0.1, "samples": 10},
        finished_at=datetime.now(UTC),
    )  # fmt: skip
    await services.bus.publish(done)
    assert await watcher.next() == ("SUCCEEDED", 1.0, 1, done.result)
    assert await watcher.next() is None  # completed
    assert services.bus.subscriber_count == 0  # and let go of its subscription
    # Each update is its own value: what was shown earlier is unchanged.
    assert [shown.progress for shown in watcher.seen] == [0.0, 0.0, 0.5, 1.0]
    assert watcher.seen[0].status == "QUEUED" and watcher.seen[0].started_at is None


async def test_a_takeover_is_newer_even_with_a_lower_version(services: ServiceContainer) -> None:
    user, calculation = await make(
        services, status=CalculationStatus.RUNNING, attempts=1, version=40, progress=0.3
    )
    watcher = Watcher(services, user, calculation.id)
    assert await watcher.next() == ("RUNNING", 0.3, 1, None)
    await services.bus.publish(
        status_change(
            calculation, status=CalculationStatus.RUNNING, attempts=2, version=12, progress=0.0
        )
    )
    status, progress, attempts, _ = await watcher.next()
    assert (status, attempts) == ("RUNNING", 2)
    assert progress == 0.3  # never a step back, although the new run starts from zero
    watcher.task.cancel()


async def test_resync_and_big_results_are_read_from_the_database(
    services: ServiceContainer,
) -> None:
    user, calculation = await make(
        services, status=CalculationStatus.RUNNING, attempts=1, version=1
    )
    watcher = Watcher(services, user, calculation.id)
    await watcher.next()
    big = {"width": 4096, "height": 4096, "insideFraction": 0.2, "png": "x" * 100_000}
    async with unit_of_work(services.session_factory) as session:
        await session.execute(
            update(Calculation)
            .where(Calculation.id == calculation.id)
            .values(status=CalculationStatus.SUCCEEDED, progress=1.0, version=9, result=big)
        )
    # The change reached the database, but its event was lost: a resync finds it.
    assert isinstance(services.bus, InProcessEventBus)
    services.bus.resync_all()
    assert await watcher.next() == ("SUCCEEDED", 1.0, 1, big)


async def test_a_result_too_big_for_the_bus_is_read_from_the_database(
    services: ServiceContainer,
) -> None:
    user, calculation = await make(
        services, status=CalculationStatus.RUNNING, attempts=1, version=1
    )
    watcher = Watcher(services, user, calculation.id)
    await watcher.next()
    big = {"width": 4096, "height": 4096, "insideFraction": 0.2, "png": "x" * 100_000}
    async with unit_of_work(services.session_factory) as session:
        await session.execute(
            update(Calculation)
            .where(Calculation.id == calculation.id)
            .values(status=CalculationStatus.SUCCEEDED, progress=1.0, version=2, result=big)
        )
    # As it arrives over Redis: encoded, the result left out.
    done = status_change(
        calculation, status=CalculationStatus.SUCCEEDED, progress=1.0, version=2, result=big
    )
    arrived = CalculationEvent.decode(done.encode())
    assert arrived.reload and arrived.result is None
    await services.bus.publish(arrived)
    assert await watcher.next() == ("SUCCEEDED", 1.0, 1, big)
    assert await watcher.next() is None


async def test_finished_calculation_yields_once(services: ServiceContainer) -> None:
    user, calculation = await make(
        services, status=CalculationStatus.FAILED, error="boom", version=3
    )
    watcher = Watcher(services, user, calculation.id)
    assert (await watcher.next())[0] == "FAILED"
    assert await watcher.next() is None


async def test_someone_elses_calculation_is_not_found(services: ServiceContainer) -> None:
    _owner, calculation = await make(services)
    stranger, _ = await make(services)
    with pytest.raises(calculations.NotFoundError):
        async for _ in calculations.watch(services, stranger, str(calculation.id)):
            pass
    assert services.bus.subscriber_count == 0


async def test_an_idle_subscription_does_not_poll_the_database(
    services: ServiceContainer, monkeypatch: pytest.MonkeyPatch
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
    original_get_row = calculations.CalculationRepository.read

    async def counting_get(self: Any, calculation_id: uuid.UUID) -> Any:
        nonlocal reads
        reads += 1
        return await original_get_row(self, calculation_id)

    monkeypatch.setattr(Subscription, "get", recording_get)
    monkeypatch.setattr(calculations.CalculationRepository, "read", counting_get)
    user, calculation = await make(services, status=CalculationStatus.QUEUED)
    watcher = Watcher(services, user, calculation.id)
    assert (await watcher.next())[0] == "QUEUED"

    async def waiting() -> bool:
        return bool(waits)

    await wait_for(waiting, timeout=5)
    assert reads == 1
    assert all(w is not None and w > 6 * 3600 - 60 for w in waits)  # its whole lifetime
    assert isinstance(services.bus, InProcessEventBus)
    services.bus.resync_all()  # what the Redis bus does when it reconnects

    async def reread() -> bool:
        return reads == 2 and len(waits) == 2

    await wait_for(reread, timeout=5)
    watcher.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher.task
    assert reads == 2
