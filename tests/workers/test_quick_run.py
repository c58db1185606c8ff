"""Quick runs (workers.runner.quick_run): a tiny calculation whose message says what it
computes is computed first and stored QUEUED → SUCCEEDED in one statement, never
claimed; every case it cannot settle that way takes the ordinary path, on both
databases."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import pytest
from sqlalchemy import update

from crunchql.compute.catalog import KINDS
from crunchql.core.lifecycle import CalculationEvent, EventKind, RunOutcome
from crunchql.db.engine import unit_of_work
from crunchql.db.models import Calculation, CalculationStatus
from crunchql.services.container import RunnerServices, Work
from crunchql.workers import runner
from crunchql.workers.queues import WORK_OPTION, DramatiqJobQueue, work_of
from crunchql.workers.runner import RunnerConfig, is_quick, run_with_policy
from tests.workers.test_runner import (
    _mark_running,
    config,
    fake_kind,
    load,
    make_calculation,
)

TINY = {"samples": 1000, "seed": 7}


def quick(**overrides: Any) -> RunnerConfig:
    return config(**{"quick_run_seconds": 0.01, **overrides})


def work(params: dict[str, Any] | None = None, kind: str = "monteCarloPi") -> Work:
    return Work(kind, KINDS[kind].validate(params or TINY) if kind in KINDS else params or {})


async def run_recording(
    services: RunnerServices,
    cfg: RunnerConfig,
    calculation_id: uuid.UUID,
    message_work: Work | None,
) -> tuple[RunOutcome, list[CalculationEvent]]:
    """One delivery through the policy, as the actor makes it, and the events published."""
    events: list[CalculationEvent] = []
    publish = services.bus.publish

    async def recording(event: CalculationEvent) -> None:
        if event.id == calculation_id:
            events.append(event)
        await publish(event)

    services.bus.publish = recording  # type: ignore[method-assign]
    try:
        stats = await run_with_policy(services, cfg, calculation_id, work=message_work)
    finally:
        del services.bus.publish  # type: ignore[attr-defined]
    return stats.outcome, events


async def test_a_tiny_calculation_is_stored_succeeded_without_a_claim(
    services: RunnerServices,
) -> None:
    quick_id = await make_calculation(services, raw=TINY)
    outcome, events = await run_recording(services, quick(), quick_id, work())
    assert outcome is RunOutcome.SUCCEEDED
    # One event: the terminal one. No RUNNING state was ever stored or announced.
    assert [(e.kind, e.status) for e in events] == [(EventKind.STATUS, CalculationStatus.SUCCEEDED)]
    assert events[0].terminal and events[0].version == 1
    row = await load(services, quick_id)
    assert row.status == "SUCCEEDED" and row.progress == 1.0 and row.attempts == 1
    assert row.worker_id is not None and row.device == "cpu" and row.error is None
    assert row.started_at is not None and row.finished_at is not None
    assert row.created_at <= row.started_at <= row.finished_at
    # The same numbers as the ordinary path computes for the same input (seeded).
    ordinary_id = await make_calculation(services, raw=TINY)
    outcome, ordinary_events = await run_recording(services, config(), ordinary_id, work())
    assert outcome is RunOutcome.SUCCEEDED
    assert ordinary_events[0].status is CalculationStatus.RUNNING  # quick runs off: claimed
    assert row.result is not None and row.result == (await load(services, ordinary_id)).result


async def test_without_the_message_s_work_or_when_off_every_run_is_claimed(
    services: RunnerServices,
) -> None:
    for cfg, message_work in ((quick(), None), (config(), work())):
        calculation_id = await make_calculation(services, raw=TINY)
        outcome, events = await run_recording(services, cfg, calculation_id, message_work)
        assert outcome is RunOutcome.SUCCEEDED
        assert events[0].status is CalculationStatus.RUNNING and events[-1].terminal


def test_only_small_cpu_work_of_one_piece_is_quick() -> None:
    cfg = quick()
    assert is_quick(cfg, work())
    # 10^8 samples is about a second of one core: claimed, with progress and a RUNNING state.
    assert not is_quick(cfg, work({"samples": 100_000_000, "seed": 1}))
    assert not is_quick(cfg, Work("monteCarloPi", work().input, shards=4))
    assert not is_quick(cfg, work({"limit": 1000}, kind="primeCount"))  # no estimate: never
    assert not is_quick(quick(quick_run_seconds=0.0), work())


async def test_a_calculation_cancelled_while_it_computed_stays_cancelled(
    services: RunnerServices,
) -> None:
    calculation_id = await make_calculation(services, raw=TINY)
    async with unit_of_work(services.session_factory) as session:
        await session.execute(
            update(Calculation)
            .where(Calculation.id == calculation_id)
            .values(status="CANCELLED", finished_at=datetime.now(UTC))
        )
    outcome, events = await run_recording(services, quick(), calculation_id, work())
    assert outcome is RunOutcome.SKIPPED and events == []
    row = await load(services, calculation_id)
    assert row.status == "CANCELLED" and row.result is None and row.attempts == 0


async def test_a_duplicate_message_changes_nothing(services: RunnerServices) -> None:
    calculation_id = await make_calculation(services, raw=TINY)
    assert (await run_recording(services, quick(), calculation_id, work()))[0].is_run
    first = await load(services, calculation_id)
    outcome, events = await run_recording(services, quick(), calculation_id, work())
    assert outcome is RunOutcome.SKIPPED and events == []
    again = await load(services, calculation_id)
    assert (again.version, again.attempts, again.finished_at) == (
        first.version, first.attempts, first.finished_at,
    )  # fmt: skip


async def test_running_rows_are_left_to_the_claim(services: RunnerServices) -> None:
    # Alive on another worker: left alone, as by the claim.
    alive = await make_calculation(services, raw=TINY)
    await _mark_running(services, alive, datetime.now(UTC))
    assert (await run_recording(services, quick(), alive, work()))[0] is RunOutcome.SKIPPED
    assert (await load(services, alive)).worker_id == "elsewhere"
    # Its worker died: the claim takes it over (a second attempt, RUNNING announced).
    stale = await make_calculation(services, raw=TINY)
    await _mark_running(services, stale, datetime.now(UTC) - timedelta(minutes=5))
    outcome, events = await run_recording(services, quick(), stale, work())
    assert outcome is RunOutcome.SUCCEEDED and events[0].status is CalculationStatus.RUNNING
    assert (await load(services, stale)).attempts == 2


async def test_a_message_that_disagrees_with_the_row_stores_the_row_s_own_result(
    services: RunnerServices,
) -> None:
    """The result is stored only for the input the row holds: a message saying
    otherwise (hand-edited, from a bug) costs a quick computation, nothing else."""
    calculation_id = await make_calculation(services, raw={"samples": 2000, "seed": 7})
    outcome, events = await run_recording(services, quick(), calculation_id, work())
    assert outcome is RunOutcome.SUCCEEDED and events[0].status is CalculationStatus.RUNNING
    row = await load(services, calculation_id)
    assert row.result is not None and row.result["samples"] == 2000


async def test_a_parked_calculation_is_left_to_the_claim(services: RunnerServices) -> None:
    calculation_id = await make_calculation(services, raw=TINY)
    async with unit_of_work(services.session_factory) as session:
        await session.execute(
            update(Calculation)
            .where(Calculation.id == calculation_id)
            .values(parked_at=datetime.now(UTC))
        )
    outcome, events = await run_recording(services, quick(), calculation_id, work())
    assert outcome is RunOutcome.SUCCEEDED and events[0].status is CalculationStatus.RUNNING


async def test_a_kernel_that_raises_is_reported_by_the_ordinary_path(
    services: RunnerServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(count: int) -> None:
        raise ZeroDivisionError("the kernel divided by zero")

    monkeypatch.setitem(KINDS, "exploding", fake_kind("exploding", explode, steps=1))
    monkeypatch.setattr(runner, "cpu_cost", lambda kind, params: 0.0)  # "tiny"
    calculation_id = await make_calculation(services, "exploding", {})
    outcome, events = await run_recording(services, quick(), calculation_id, Work("exploding", {}))
    assert outcome is RunOutcome.FAILED
    assert [e.status for e in events] == [CalculationStatus.RUNNING, CalculationStatus.FAILED]
    row = await load(services, calculation_id)
    assert row.status == "FAILED" and "the kernel divided by zero" in (row.error or "")


async def test_a_tiny_calculation_does_not_wait_for_the_owner_s_running_slot(
    services: RunnerServices,
) -> None:
    """Under a running cap of 1, with the owner's one slot taken by a live run, a tiny
    calculation still completes: it never holds a slot. Larger ones are parked."""
    busy = await make_calculation(services, raw=TINY)
    await _mark_running(services, busy, datetime.now(UTC))
    async with unit_of_work(services.session_factory) as session:
        owner_id = (await session.get(Calculation, busy)).owner_id  # type: ignore[union-attr]
        row = Calculation(owner_id=owner_id, kind="monteCarloPi", input=work().input)
        session.add(row)
        await session.flush()
        tiny_id = row.id
    capped = quick(max_running_per_user=1)
    assert (await run_recording(services, capped, tiny_id, work()))[0] is RunOutcome.SUCCEEDED
    assert (await load(services, busy)).status == "RUNNING"  # untouched


def test_the_message_carries_what_the_calculation_computes() -> None:
    calculation_id = uuid.uuid4()
    sent = DramatiqJobQueue._run_message(calculation_id, work=work())
    received = dramatiq.Message.decode(sent.encode())
    assert received.args == (str(calculation_id),)
    assert work_of(received) == Work("monteCarloPi", work().input)
    # Shard-sized work, no work, or an option of another shape: no quick run.
    split = Work("monteCarloPi", work().input, shards=4)
    assert WORK_OPTION not in DramatiqJobQueue._run_message(calculation_id, work=split).options
    assert (
        work_of(dramatiq.Message.decode(DramatiqJobQueue._run_message(calculation_id).encode()))
        is None
    )
    odd = sent.copy(options={WORK_OPTION: ["monteCarloPi", {}]})
    assert work_of(odd) is None
