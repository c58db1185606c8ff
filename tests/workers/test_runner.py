"""The runner on each database with the in-process bus: claims, progress, failures,
cancellation, shutdown hand-back; and the one retry policy, driven through both the
Dramatiq actor (on Dramatiq's stub broker and worker) and the embedded queue."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from crunchql.compute.base import Kind
from crunchql.compute.catalog import KINDS
from crunchql.core.lifecycle import CalculationEvent, EventKind, RunOutcome
from crunchql.db.engine import unit_of_work
from crunchql.db.models import Calculation, CalculationStatus, User
from crunchql.db.repositories import CalculationRepository
from crunchql.services.container import RunnerServices
from crunchql.workers.runner import RunnerConfig, run_calculation, run_with_policy


def config(**overrides: Any) -> RunnerConfig:
    values: dict[str, Any] = {
        "worker_id": f"test-{uuid.uuid4().hex[:6]}",
        "publish_interval": 0.0,
        "write_interval": 0.0,
    }
    values.update(overrides)
    return RunnerConfig(**values)


async def make_calculation(
    services: RunnerServices, kind: str = "monteCarloPi", raw: Mapping[str, Any] | None = None
) -> uuid.UUID:
    params = (
        KINDS[kind].validate(raw or {"samples": 300_000_000, "seed": 3})
        if kind in KINDS
        else dict(raw or {})
    )
    async with unit_of_work(services.session_factory) as session:
        user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
        session.add(user)
        await session.flush()
        calculation = Calculation(owner_id=user.id, kind=kind, input=params)
        session.add(calculation)
        await session.flush()
        return calculation.id


async def load(services: RunnerServices, calculation_id: uuid.UUID) -> Calculation:
    async with unit_of_work(services.session_factory) as session:
        row = await CalculationRepository(session).get(calculation_id)
    assert row is not None
    return row


async def run_watching(
    services: RunnerServices, calculation_id: uuid.UUID, cfg: RunnerConfig
) -> tuple[RunOutcome, list[CalculationEvent]]:
    """The outcome, and every event the run published, in order (recorded at the bus:
    a subscriber reading only afterwards would see consecutive ticks coalesced)."""
    events: list[CalculationEvent] = []
    bus = services.bus
    publish = bus.publish

    async def recording(event: CalculationEvent) -> None:
        if event.id == calculation_id:
            events.append(event)
        await publish(event)

    bus.publish = recording  # type: ignore[method-assign]
    try:
        stats = await run_calculation(services, cfg, calculation_id)
    finally:
        del bus.publish  # type: ignore[attr-defined]
    return stats.outcome, events


async def outcome_of(
    services: RunnerServices, cfg: RunnerConfig, calculation_id: uuid.UUID
) -> RunOutcome:
    return (await run_calculation(services, cfg, calculation_id)).outcome


def ticks(events: list[CalculationEvent]) -> list[CalculationEvent]:
    return [event for event in events if event.kind is EventKind.PROGRESS]


async def test_a_run_publishes_status_progress_and_the_terminal_event(
    services: RunnerServices,
) -> None:
    calculation_id = await make_calculation(services)
    outcome, events = await run_watching(services, calculation_id, config())
    assert outcome is RunOutcome.SUCCEEDED
    assert events[0].status is CalculationStatus.RUNNING and events[0].kind is EventKind.STATUS
    progress = ticks(events)
    assert len(progress) >= 2
    values = [e.progress for e in progress]
    assert values == sorted(values) and all(0 < v < 1 for v in values)
    assert all((e.partial_result or {})["standardError"] > 0 for e in progress)
    assert {e.attempt for e in events} == {1}
    versions = [e.version for e in events]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert events[-1].terminal and events[-1].status is CalculationStatus.SUCCEEDED
    row = await load(services, calculation_id)
    assert row.status == "SUCCEEDED" and row.progress == 1.0 and row.attempts == 1
    assert row.result is not None and row.result["samples"] == 300_000_000
    assert row.started_at is not None and row.finished_at is not None


async def test_a_duplicate_message_does_nothing(services: RunnerServices) -> None:
    calculation_id = await make_calculation(services, raw={"samples": 1000, "seed": 1})
    assert (
        await run_calculation(services, config(), calculation_id)
    ).outcome is RunOutcome.SUCCEEDED
    finished = await load(services, calculation_id)
    assert await outcome_of(services, config(), calculation_id) is RunOutcome.SKIPPED
    again = await load(services, calculation_id)
    assert again.attempts == 1 and again.finished_at == finished.finished_at


async def _mark_running(
    services: RunnerServices, calculation_id: uuid.UUID, heartbeat: datetime
) -> None:
    async with unit_of_work(services.session_factory) as session:
        await session.execute(
            update(Calculation)
            .where(Calculation.id == calculation_id)
            .values(status="RUNNING", worker_id="elsewhere", heartbeat_at=heartbeat, attempts=1,
                    progress=0.4)
        )  # fmt: skip


async def test_a_run_alive_elsewhere_is_left_alone(services: RunnerServices) -> None:
    calculation_id = await make_calculation(services, raw={"samples": 1000, "seed": 1})
    await _mark_running(services, calculation_id, datetime.now(UTC))
    assert await outcome_of(services, config(), calculation_id) is RunOutcome.SKIPPED
    assert (await load(services, calculation_id)).worker_id == "elsewhere"


async def test_a_run_whose_worker_died_is_taken_over(services: RunnerServices) -> None:
    calculation_id = await make_calculation(services, raw={"samples": 50_000_000, "seed": 1})
    await _mark_running(services, calculation_id, datetime.now(UTC) - timedelta(minutes=5))
    outcome, events = await run_watching(services, calculation_id, config())
    assert outcome is RunOutcome.SUCCEEDED
    row = await load(services, calculation_id)
    assert row.attempts == 2 and row.status == "SUCCEEDED"
    # Progress never goes back below what the dead worker had reported.
    assert all(e.progress >= 0.4 for e in ticks(events))
    assert {e.attempt for e in events} == {2}


def fake_kind(name: str, step: Any, *, steps: int = 3, time_limit: float = 60.0) -> Kind:
    class FakeJob:
        def __init__(self) -> None:
            self.count = 0

        @property
        def done(self) -> bool:
            return self.count >= steps

        @property
        def progress(self) -> float:
            return self.count / steps

        def step(self) -> None:
            step(self.count)
            self.count += 1

        def partial_result(self) -> None:
            return None

        def result(self) -> dict[str, Any]:
            return {"steps": self.count}

    class FakeKind(Kind[Any]):
        def start(self, params: Mapping[str, Any]) -> FakeJob:
            return FakeJob()

        def warm_up(self) -> None:
            pass

    return FakeKind(
        name=name, description="test", params=AnyParams, kernel="-", time_limit_seconds=time_limit
    )


@dataclass(frozen=True)
class AnyParams:
    """Parameters that accept any input (the fake kinds' jobs ignore them)."""

    raw: dict[str, Any]

    @classmethod
    def from_input(cls, raw: Mapping[str, Any]) -> AnyParams:
        return cls(dict(raw))

    def to_json(self) -> dict[str, Any]:
        return self.raw


async def test_a_kernel_that_raises_fails_the_calculation_with_its_message(
    services: RunnerServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(count: int) -> None:
        if count == 1:
            raise ZeroDivisionError("the kernel divided by zero")

    monkeypatch.setitem(KINDS, "exploding", fake_kind("exploding", explode))
    calculation_id = await make_calculation(services, "exploding", {})
    outcome, events = await run_watching(services, calculation_id, config())
    assert outcome is RunOutcome.FAILED
    row = await load(services, calculation_id)
    assert row.status == "FAILED" and "the kernel divided by zero" in (row.error or "")
    assert events[-1].terminal
    # The runner keeps serving.
    other = await make_calculation(services, raw={"samples": 1000, "seed": 2})
    assert (await run_calculation(services, config(), other)).outcome is RunOutcome.SUCCEEDED


async def test_the_time_limit_fails_the_job_between_chunks(
    services: RunnerServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        KINDS, "slow", fake_kind("slow", lambda _n: __import__("time").sleep(0.2), steps=50,
                                 time_limit=0.5)
    )  # fmt: skip
    calculation_id = await make_calculation(services, "slow", {})
    assert await outcome_of(services, config(), calculation_id) is RunOutcome.FAILED
    row = await load(services, calculation_id)
    assert row.status == "FAILED" and "Time limit" in (row.error or "")


async def test_cancel_stops_the_run_at_a_chunk_boundary(
    services: RunnerServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def step(_count: int) -> None:
        loop.call_soon_threadsafe(started.set)
        __import__("time").sleep(0.05)

    monkeypatch.setitem(KINDS, "long", fake_kind("long", step, steps=1000))
    calculation_id = await make_calculation(services, "long", {})
    run = asyncio.create_task(run_calculation(services, config(), calculation_id))
    await asyncio.wait_for(started.wait(), 10)
    async with unit_of_work(services.session_factory) as session:
        assert await CalculationRepository(session).cancel(calculation_id, datetime.now(UTC))
    stats = await asyncio.wait_for(run, 5)
    assert stats.outcome is RunOutcome.CANCELLED
    row = await load(services, calculation_id)
    assert row.status == "CANCELLED" and row.result is None


async def test_shutdown_hands_the_calculation_back(
    services: RunnerServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    requeued: list[uuid.UUID] = []

    async def requeue(calculation_id: uuid.UUID) -> None:
        requeued.append(calculation_id)

    cfg = config(requeue=requeue)
    monkeypatch.setitem(
        KINDS, "handback", fake_kind("handback", lambda n: n == 1 and cfg.stopping.set(), steps=10)
    )
    calculation_id = await make_calculation(services, "handback", {})
    assert await outcome_of(services, cfg, calculation_id) is RunOutcome.RELEASED
    row = await load(services, calculation_id)
    assert row.status == CalculationStatus.QUEUED.value and row.worker_id is None
    assert requeued == [calculation_id]
    # A stopping worker does not even claim what it is sent.
    assert (await run_with_policy(services, cfg, calculation_id)).outcome is RunOutcome.SKIPPED
    assert requeued == [calculation_id, calculation_id]
    assert (
        await run_calculation(services, config(), calculation_id)
    ).outcome is RunOutcome.SUCCEEDED


async def test_a_process_shutting_down_hands_the_run_back_instead_of_failing_it(
    services: RunnerServices,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    requeued: list[uuid.UUID] = []

    async def requeue(calculation_id: uuid.UUID) -> None:
        requeued.append(calculation_id)

    calculation_id = await make_calculation(services, raw={"samples": 1000, "seed": 1})
    executor = ThreadPoolExecutor(max_workers=1)
    executor.shutdown()  # as during interpreter or worker shutdown
    stats = await run_calculation(services, config(requeue=requeue), calculation_id, executor)
    assert stats.outcome is RunOutcome.RELEASED
    row = await load(services, calculation_id)
    assert row.status == "QUEUED" and row.error is None
    assert requeued == [calculation_id]


BIG_INPUTS = {
    "monteCarloPi": {"samples": 5_000_000_000, "seed": 1},
    "optionPricing": {
        "spot": 100, "strike": 100, "rate": 0.03, "volatility": 0.2, "maturity": 1,
        "optionType": "CALL", "style": "ASIAN", "paths": 2_000_000, "seed": 1,
    },
    "primeCount": {"limit": 10_000_000_000},
    "mandelbrot": {"width": 4096, "height": 4096, "maxIterations": 2000},
    "nBody": {"preset": "RANDOM_CLUSTER", "bodies": 3000, "steps": 2000, "dt": 0.001, "seed": 1},
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(BIG_INPUTS))
async def test_every_kind_stops_within_a_chunk_when_cancelled(
    services: RunnerServices, kind: str
) -> None:
    calculation_id = await make_calculation(services, kind, BIG_INPUTS[kind])
    async with services.bus.subscribe(calculation_id) as subscription:
        run = asyncio.create_task(run_calculation(services, config(), calculation_id))
        while True:  # wait for the first progress event: the kernel is under way
            event = await subscription.get(timeout=60)
            assert event is not None, "no progress within 60 s"
            assert isinstance(event, CalculationEvent)
            if event.kind is EventKind.PROGRESS and event.progress > 0:
                break
        async with unit_of_work(services.session_factory) as session:
            assert await CalculationRepository(session).cancel(calculation_id, datetime.now(UTC))
        stats = await asyncio.wait_for(run, 10)  # chunks are well under a second
    assert stats.outcome is RunOutcome.CANCELLED
    row = await load(services, calculation_id)
    assert row.status == "CANCELLED" and row.result is None and row.progress < 1.0
