"""Fair compute: an owner's calculations beyond the per-user running limit wait,
QUEUED, without holding a worker, and start again as the owner's runs end."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from crunchql.compute.base import Kind
from crunchql.compute.catalog import KINDS
from crunchql.core.lifecycle import RunOutcome
from crunchql.db.engine import create_engine, create_session_factory, unit_of_work
from crunchql.db.models import Calculation, CalculationStatus, User
from crunchql.db.repositories import CalculationRepository
from crunchql.pubsub.bus import InProcessEventBus
from crunchql.services.container import RunnerServices
from crunchql.workers.queues import EmbeddedJobQueue
from crunchql.workers.runner import RunnerConfig, _start_waiting, run_calculation
from tests.conftest import truncate, wait_for
from tests.workers.test_runner import AnyParams


class SleepyJob:
    """``steps`` chunks of ``seconds`` each (a stand-in for a long kernel)."""

    def __init__(self, steps: int, seconds: float) -> None:
        self.steps, self.seconds, self.count = steps, seconds, 0

    @property
    def done(self) -> bool:
        return self.count >= self.steps

    @property
    def progress(self) -> float:
        return self.count / self.steps

    def step(self) -> None:
        time.sleep(self.seconds)
        self.count += 1

    def partial_result(self) -> dict[str, Any] | None:
        return None

    def result(self) -> dict[str, Any]:
        return {"steps": self.count}


def sleepy_kind(name: str, steps: int, seconds: float) -> Kind[Any]:
    class SleepyKind(Kind[Any]):
        def start(self, params: Mapping[str, Any]) -> SleepyJob:
            return SleepyJob(steps, seconds)

        def warm_up(self) -> None:
            pass

    return SleepyKind(name=name, description="test", params=AnyParams, kernel="-")


async def new_user(services: RunnerServices) -> uuid.UUID:
    async with unit_of_work(services.session_factory) as session:
        user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
        session.add(user)
        await session.flush()
        return user.id


async def new_calculation(services: RunnerServices, owner: uuid.UUID, kind: str) -> uuid.UUID:
    async with unit_of_work(services.session_factory) as session:
        row = await CalculationRepository(session).create(
            owner_id=owner, kind=kind, params={}, now=datetime.now(UTC)
        )
        return row.id


async def count(services: RunnerServices, owner: uuid.UUID, status: CalculationStatus) -> int:
    async with unit_of_work(services.session_factory) as session:
        statement = select(func.count()).where(
            Calculation.owner_id == owner, Calculation.status == status.value
        )
        return int((await session.execute(statement)).scalar_one())


async def status_of(services: RunnerServices, calculation_id: uuid.UUID) -> str:
    async with unit_of_work(services.session_factory) as session:
        row = await CalculationRepository(session).get(calculation_id)
        assert row is not None
        return row.status


async def test_one_users_queue_does_not_delay_another_user(
    services: RunnerServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finding: the queue was first-in-first-out, so one user's 20 long jobs
    delayed everyone."""
    monkeypatch.setitem(KINDS, "long", sleepy_kind("long", steps=100_000, seconds=0.01))
    monkeypatch.setitem(KINDS, "tiny", sleepy_kind("tiny", steps=1, seconds=0.0))
    config = RunnerConfig(
        worker_id="fair", publish_interval=0.0, write_interval=0.0, max_running_per_user=2
    )
    queue = EmbeddedJobQueue(services, config, concurrency=4)
    alice, bob = await new_user(services), await new_user(services)
    alices = [await new_calculation(services, alice, "long") for _ in range(20)]
    peak = 0
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, await count(services, alice, CalculationStatus.RUNNING))
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        for calculation_id in alices:
            await queue.enqueue(calculation_id)

        async def alice_runs_two() -> bool:
            return await count(services, alice, CalculationStatus.RUNNING) == 2

        await wait_for(alice_runs_two, timeout=30)
        tiny = await new_calculation(services, bob, "tiny")
        await queue.enqueue(tiny)

        async def bob_done() -> bool:
            return await status_of(services, tiny) == CalculationStatus.SUCCEEDED.value

        await wait_for(bob_done, timeout=30)
        # Bob did not wait for Alice's queue: it is all still there.
        assert await count(services, alice, CalculationStatus.QUEUED) == 18

        # One of Alice's runs ends: her next waiting calculation starts (none is lost).
        async with unit_of_work(services.session_factory) as session:
            running = (
                await session.execute(
                    select(Calculation.id).where(
                        Calculation.owner_id == alice,
                        Calculation.status == CalculationStatus.RUNNING.value,
                    )
                )
            ).scalars()
            first = next(iter(running))
            await CalculationRepository(session).cancel(first, datetime.now(UTC))

        async def next_one_started() -> bool:
            return (
                await count(services, alice, CalculationStatus.RUNNING) == 2
                and await count(services, alice, CalculationStatus.QUEUED) == 17
            )

        await wait_for(next_one_started, timeout=30)
        assert peak == 2  # never more than the limit at once
    finally:
        sampling = False
        await sampler
        async with unit_of_work(services.session_factory) as session:
            repo = CalculationRepository(session)
            for calculation_id in alices:
                await repo.cancel(calculation_id, datetime.now(UTC))
        await queue.close()


async def test_claims_beyond_the_running_limit_leave_the_row_queued(
    services: RunnerServices,
) -> None:
    owner = await new_user(services)
    ids = [await new_calculation(services, owner, "long") for _ in range(6)]
    now = datetime.now(UTC)
    stale_before = now - timedelta(seconds=30)
    factory = services.session_factory

    async def claim(calculation_id: uuid.UUID) -> bool:
        """As the runner does: a claim refused at the limit parks the row."""
        async with unit_of_work(factory) as session:
            repo = CalculationRepository(session)
            row = await repo.claim(
                calculation_id, "w", now, stale_before, max_running=2, alive_after=stale_before
            )
            if row is None:
                assert await repo.park(calculation_id, now) == owner
        return row is not None

    # In parallel (each claim its own transaction): the owner's row lock decides.
    claimed = await asyncio.gather(*(claim(each) for each in ids))
    assert sum(claimed) == 2
    assert await count(services, owner, CalculationStatus.QUEUED) == 4
    refused = {each for each, ok in zip(ids, claimed, strict=True) if not ok}
    async with unit_of_work(factory) as session:
        repo = CalculationRepository(session)
        # While both runs are alive, a take that needs a free slot takes nothing.
        assert not await repo.take_parked(owner, 10, max_running=2, alive_after=stale_before)
        waiting = await repo.take_parked(owner, 10)
        # Taken once: a second finish does not send them again.
        assert not await repo.take_parked(owner, 10)
    assert len(waiting) == 4 and set(waiting) == refused
    # The sweeper does not re-send what waits for its owner's slot (it would be refused).
    async with unit_of_work(factory) as session:
        repo = CalculationRepository(session)
        created_before = now + timedelta(seconds=1)
        assert len(await repo.list_waiting(created_before=created_before)) == 4
        assert not await repo.list_waiting(
            created_before=created_before, max_running=2, alive_after=stale_before
        )
        assert len(await repo.list_waiting(
            created_before=created_before, max_running=3, alive_after=stale_before
        )) == 4  # fmt: skip
    # A run whose worker stopped beating no longer counts against its owner.
    later = now + timedelta(minutes=5)
    async with unit_of_work(factory) as session:
        row = await CalculationRepository(session).claim(
            waiting[0], "w2", later, later - timedelta(seconds=30), max_running=2,
            alive_after=later - timedelta(seconds=30),
        )  # fmt: skip
    assert row is not None


async def test_a_finish_sends_again_only_what_was_parked(services: RunnerServices) -> None:
    """Before, a finishing run re-sent its owner's oldest QUEUED rows, whether parked or
    still waiting in the broker queue with their own message: a duplicate message per
    finish, and with a limit of N, N of them."""
    owner = await new_user(services)
    now = datetime.now(UTC)
    stale_before = now - timedelta(seconds=30)
    factory = services.session_factory
    running = [await new_calculation(services, owner, "tiny") for _ in range(2)]
    parked = [await new_calculation(services, owner, "tiny") for _ in range(3)]
    in_queue = [await new_calculation(services, owner, "tiny") for _ in range(4)]
    async with unit_of_work(factory) as session:
        repo = CalculationRepository(session)
        for calculation_id in running:
            assert await repo.claim(
                calculation_id, "w", now, stale_before, max_running=2, alive_after=stale_before
            )
    for calculation_id in parked:  # the runner's own claim: refused at the limit, parked
        config = RunnerConfig(worker_id="w2", max_running_per_user=2)
        stats = await run_calculation(services, config, calculation_id)
        assert stats.outcome is RunOutcome.SKIPPED
    sent: list[uuid.UUID] = []

    async def requeue(calculation_id: uuid.UUID) -> None:
        sent.append(calculation_id)

    config = RunnerConfig(worker_id="w2", max_running_per_user=2, requeue=requeue)
    await _start_waiting(services, config, owner)  # one of the owner's runs ended
    assert sent == parked[:2]  # the oldest parked, up to the limit; none of in_queue
    await _start_waiting(services, config, owner)
    assert sent == parked  # the last one; nothing is sent twice
    await _start_waiting(services, config, owner)
    assert sent == parked
    assert await count(services, owner, CalculationStatus.QUEUED) == len(parked + in_queue)


@pytest.fixture
async def postgres_services(postgres_url: str) -> AsyncIterator[RunnerServices]:
    await truncate(postgres_url)
    engine = create_engine(postgres_url)
    yield RunnerServices(create_session_factory(engine), InProcessEventBus())
    await engine.dispose()


async def test_a_run_ending_while_another_parks_leaves_nothing_parked(
    postgres_services: RunnerServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the parker closes: its claim counted a run whose finish (and that
    finish's look for parked rows) came before the park was committed. After parking,
    the parker looks again and, with a slot free, sends the parked row itself.
    (PostgreSQL only: on SQLite the claim's transaction holds the one write lock from
    its UPDATE to its commit, so no finish can come in between.)"""
    services = postgres_services
    monkeypatch.setitem(KINDS, "tiny", sleepy_kind("tiny", steps=1, seconds=0.0))
    owner = await new_user(services)
    now = datetime.now(UTC)
    stale_before = now - timedelta(seconds=30)
    first = await new_calculation(services, owner, "tiny")
    second = await new_calculation(services, owner, "tiny")
    async with unit_of_work(services.session_factory) as session:
        assert await CalculationRepository(session).claim(
            first, "w", now, stale_before, max_running=1, alive_after=stale_before
        )
    sent: list[uuid.UUID] = []

    async def requeue(calculation_id: uuid.UUID) -> None:
        sent.append(calculation_id)

    config = RunnerConfig(worker_id="w2", max_running_per_user=1, requeue=requeue)
    claim_or_park = CalculationRepository.claim_or_park

    async def parked_while_first_ended(
        self: CalculationRepository, *args: Any, **kwargs: Any
    ) -> tuple[Any, uuid.UUID | None]:
        claimed, owner_id = await claim_or_park(self, *args, **kwargs)
        assert claimed is None and owner_id == owner  # parked: `first` was running
        # `first` ends, and its finish looked for parked rows before this park was
        # committed: it found none, so it sends nothing.
        async with unit_of_work(services.session_factory) as session:
            assert await CalculationRepository(session).cancel(first, datetime.now(UTC))
        return claimed, owner_id

    monkeypatch.setattr(CalculationRepository, "claim_or_park", parked_while_first_ended)
    assert (await run_calculation(services, config, second)).outcome is RunOutcome.SKIPPED
    assert sent == [second]  # sent again by the parker's own second look
