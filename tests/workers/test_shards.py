"""Sharded calculations on each database: split, shards run by several workers in any
order, the last shard combines (once), cancel, and a shard whose worker died re-run on
its own; through the runner and through the embedded queue. Every result is compared with
the unsplit run's, bit for bit."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from crunchql.compute import config as kernel_config
from crunchql.compute.catalog import KINDS
from crunchql.core.lifecycle import CalculationEvent, CalculationStatus, EventKind, RunOutcome
from crunchql.db.engine import unit_of_work
from crunchql.db.models import Calculation, CalculationShard, ShardStatus, User
from crunchql.db.repositories import CalculationRepository, ShardRepository
from crunchql.services.container import RunnerServices, Work
from crunchql.workers.queues import EmbeddedJobQueue
from crunchql.workers.runner import RunnerConfig, run_calculation
from crunchql.workers.shards import run_shard, run_shard_with_policy

PI = {"samples": 8 * kernel_config.PI_BLOCK_SAMPLES - 1001, "seed": 99}
INPUTS: dict[str, dict[str, Any]] = {
    "monteCarloPi": PI,
    "optionPricing": {
        "spot": 100.0, "strike": 100.0, "rate": 0.05, "volatility": 0.3, "maturity": 1.0,
        "optionType": "CALL", "style": "ASIAN", "steps": 64, "paths": 20_000, "seed": 5,
    },
    "primeCount": {"limit": 3 * 10**7},
    "mandelbrot": {"width": 64, "height": 45, "maxIterations": 500, "xMin": -0.75,
                   "xMax": -0.74, "yMin": 0.1, "yMax": 0.11},
}  # fmt: skip
TINY_SHARD = 1e-9  # seconds: every job splits into as many shards as it has blocks


class Sent:
    """A stand-in for the broker: remembers the shard messages the runner sends."""

    def __init__(self) -> None:
        self.messages: list[tuple[uuid.UUID, int]] = []
        self.work: list[Work | None] = []

    async def __call__(
        self, calculation_id: uuid.UUID, shard: int, work: Work | None = None
    ) -> None:
        self.messages.append((calculation_id, shard))
        self.work.append(work)


def config(sent: Sent | None = None, **overrides: Any) -> RunnerConfig:
    values: dict[str, Any] = {
        "worker_id": f"test-{uuid.uuid4().hex[:6]}",
        "publish_interval": 0.0,
        "write_interval": 0.0,
        "shard_seconds": TINY_SHARD,
        "send_shard": sent,
    }
    values.update(overrides)
    return RunnerConfig(**values)


def unsplit(kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    job = KINDS[kind].start(KINDS[kind].validate(raw))
    while not job.done:
        job.step()
    result: dict[str, Any] = job.result()
    return result


async def make_calculation(services: RunnerServices, kind: str, raw: dict[str, Any]) -> uuid.UUID:
    async with unit_of_work(services.session_factory) as session:
        user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
        session.add(user)
        await session.flush()
        row = Calculation(owner_id=user.id, kind=kind, input=KINDS[kind].validate(raw))
        session.add(row)
        await session.flush()
        return row.id


async def load(services: RunnerServices, calculation_id: uuid.UUID) -> Calculation:
    async with unit_of_work(services.session_factory) as session:
        row = await CalculationRepository(session).get(calculation_id)
    assert row is not None
    return row


async def shard_rows(services: RunnerServices, calculation_id: uuid.UUID) -> list[CalculationShard]:
    async with unit_of_work(services.session_factory) as session:
        statement = (
            select(CalculationShard)
            .where(CalculationShard.calculation_id == calculation_id)
            .order_by(CalculationShard.shard)
        )
        return list((await session.execute(statement)).scalars())


async def split(services: RunnerServices, kind: str, raw: dict[str, Any]) -> tuple[uuid.UUID, Sent]:
    calculation_id = await make_calculation(services, kind, raw)
    sent = Sent()
    stats = await run_calculation(services, config(sent), calculation_id)
    assert stats.outcome is RunOutcome.SPLIT
    return calculation_id, sent


async def test_a_large_run_is_split_and_any_workers_in_any_order_give_the_unsplit_result(
    services: RunnerServices,
) -> None:
    calculation_id, sent = await split(services, "monteCarloPi", PI)
    row = await load(services, calculation_id)
    assert row.status is CalculationStatus.RUNNING and row.device == "cpu"
    assert row.shards == 8 and row.shards_done == 0  # one shard per block
    assert sent.messages == [(calculation_id, shard) for shard in range(8)]
    # Each shard message carries what routing needs: the kind, input and shard count
    # (a shard goes to a GPU worker on its own share of the cost).
    assert sent.work == [Work("monteCarloPi", row.input, 8)] * 8
    workers = [config(sent), config(sent)]
    order = list(range(8))
    random.Random(7).shuffle(order)
    events: list[CalculationEvent] = []
    async with services.bus.subscribe(calculation_id) as subscription:
        outcomes = [
            (await run_shard(services, workers[i % 2], calculation_id, shard)).outcome
            for i, shard in enumerate(order)
        ]
        while (event := await subscription.get(timeout=0.05)) is not None:
            assert isinstance(event, CalculationEvent)
            events.append(event)
    assert outcomes == [RunOutcome.SPLIT] * 7 + [RunOutcome.SUCCEEDED]
    row = await load(services, calculation_id)
    assert row.status is CalculationStatus.SUCCEEDED and row.shards_done == 8
    assert row.result == unsplit("monteCarloPi", PI)
    assert row.progress == 1.0
    # Progress is the mean over shards, never decreasing; shardsDone counts up to 8.
    done = [e.shards_done for e in events]
    assert done == sorted(done) and done[-1] == 8
    progress = [e.progress for e in events if e.kind is EventKind.PROGRESS]
    assert progress == sorted(progress)
    # Every tick carries a running estimate (the reporting shard's own), for a live chart.
    ticks = [e for e in events if e.kind is EventKind.PROGRESS]
    assert ticks and all((e.partial_result or {}).get("standardError", 0) > 0 for e in ticks)
    assert events[-1].status is CalculationStatus.SUCCEEDED and events[-1].shards == 8
    # A late duplicate of any shard finds nothing to do and changes nothing.
    assert (
        await run_shard(services, config(sent), calculation_id, 3)
    ).outcome is RunOutcome.SKIPPED
    assert (await load(services, calculation_id)).result == row.result


async def test_two_last_shards_finishing_at_once_finish_the_calculation_once(
    services: RunnerServices,
) -> None:
    calculation_id, sent = await split(services, "monteCarloPi", PI)
    for shard in range(6):
        await run_shard(services, config(sent), calculation_id, shard)
    announced: list[CalculationEvent] = []
    async with services.bus.subscribe(calculation_id) as subscription:
        results = await asyncio.gather(
            run_shard(services, config(sent), calculation_id, 6),
            run_shard(services, config(sent), calculation_id, 7),
        )
        while (event := await subscription.get(timeout=0.05)) is not None:
            assert isinstance(event, CalculationEvent)
            announced.append(event)
    assert sorted(r.outcome for r in results) == sorted([RunOutcome.SPLIT, RunOutcome.SUCCEEDED])
    assert [e.status for e in announced if e.terminal] == [CalculationStatus.SUCCEEDED]
    row = await load(services, calculation_id)
    assert row.shards_done == 8 and row.result == unsplit("monteCarloPi", PI)


async def test_a_cancel_stops_every_shard_at_its_next_chunk(services: RunnerServices) -> None:
    blocks = 3 * kernel_config.PI_CHUNK_BLOCKS  # per shard: three chunks
    raw = {"samples": 4 * blocks * kernel_config.PI_BLOCK_SAMPLES, "seed": 1}
    calculation_id = await make_calculation(services, "monteCarloPi", raw)
    sent = Sent()
    per_shard = blocks * kernel_config.PI_BLOCK_SAMPLES / kernel_config.PI_SAMPLES_PER_CORE_SECOND
    cfg = config(sent, shard_seconds=per_shard)
    assert (await run_calculation(services, cfg, calculation_id)).outcome is RunOutcome.SPLIT
    assert (await load(services, calculation_id)).shards == 4
    async with services.bus.subscribe(calculation_id) as subscription:
        task = asyncio.create_task(run_shard(services, config(sent), calculation_id, 0))
        while True:  # the shard's first progress write
            event = await subscription.get(timeout=60)
            assert event is not None, "no progress from the shard within 60 s"
            if isinstance(event, CalculationEvent) and event.kind is EventKind.PROGRESS:
                break
        async with unit_of_work(services.session_factory) as session:
            assert await CalculationRepository(session).cancel(calculation_id, datetime.now(UTC))
        assert (await asyncio.wait_for(task, 120)).outcome is RunOutcome.CANCELLED
    # The shards not started yet find nothing to run.
    for shard in (1, 2, 3):
        assert (await run_shard(services, config(sent), calculation_id, shard)).outcome is (
            RunOutcome.SKIPPED
        )
    row = await load(services, calculation_id)
    assert row.status is CalculationStatus.CANCELLED and row.result is None
    assert all(s.status is not ShardStatus.DONE for s in await shard_rows(services, calculation_id))


async def test_a_shard_whose_worker_died_is_re_run_alone(services: RunnerServices) -> None:
    calculation_id, sent = await split(services, "optionPricing", INPUTS["optionPricing"])
    shards = (await load(services, calculation_id)).shards
    assert shards > 2
    for shard in range(1, shards):
        await run_shard(services, config(sent), calculation_id, shard)
    # Shard 0 was claimed by a worker that was then killed: it never beats again.
    dead, now = config(sent), datetime.now(UTC)
    async with unit_of_work(services.session_factory) as session:
        assert await ShardRepository(session).claim(calculation_id, 0, dead.worker_id, now, now)
    # While it looks alive, another delivery leaves it alone.
    again = await run_shard(services, config(sent), calculation_id, 0)
    assert again.outcome is RunOutcome.SKIPPED
    done_before = {s.shard: s.partial for s in await shard_rows(services, calculation_id)}
    # Once its heartbeat is stale, the sweep hands back that shard only, and its re-run
    # finishes the calculation.
    async with unit_of_work(services.session_factory) as session:
        await session.execute(
            update(CalculationShard)
            .where(CalculationShard.calculation_id == calculation_id)
            .values(heartbeat_at=now - timedelta(minutes=5))
        )
    async with unit_of_work(services.session_factory) as session:
        stale = await ShardRepository(session).release_stale(
            stale_before=datetime.now(UTC) - timedelta(seconds=30)
        )
    assert stale == [(calculation_id, 0)]
    stats = await run_shard_with_policy(services, config(sent), calculation_id, 0)
    assert stats.outcome is RunOutcome.SUCCEEDED
    rows = await shard_rows(services, calculation_id)
    assert [s.attempts for s in rows] == [2] + [1] * (shards - 1)
    assert all(rows[s].partial == done_before[s] for s in range(1, shards))  # kept, not re-run
    # A shard started twice: the calculation shows two attempts.
    assert (await load(services, calculation_id)).attempts == 2
    assert (await load(services, calculation_id)).result == unsplit(
        "optionPricing", INPUTS["optionPricing"]
    )


async def test_a_takeover_of_a_split_calculation_re_sends_only_unfinished_shards(
    services: RunnerServices,
) -> None:
    calculation_id, sent = await split(services, "monteCarloPi", PI)
    for shard in (0, 2, 5):
        await run_shard(services, config(sent), calculation_id, shard)
    # Shard 1 is held by a worker that still looks alive.
    now = datetime.now(UTC)
    async with unit_of_work(services.session_factory) as session:
        assert await ShardRepository(session).claim(calculation_id, 1, "alive", now, now)
    # The calculation's own heartbeat went stale: re-sent, claimed by another worker.
    async with unit_of_work(services.session_factory) as session:
        await session.execute(
            update(Calculation)
            .where(Calculation.id == calculation_id)
            .values(heartbeat_at=now - timedelta(minutes=5))
        )
    again = Sent()
    stats = await run_calculation(services, config(again), calculation_id)
    assert stats.outcome is RunOutcome.SPLIT
    assert again.messages == [(calculation_id, s) for s in (3, 4, 6, 7)]
    row = await load(services, calculation_id)
    assert row.shards == 8 and row.shards_done == 3 and row.attempts == 2
    # An immediate takeover (the embedded mode after a restart: nothing it ran is alive)
    # re-sends the running shard too.
    restarted = Sent()
    stats = await run_calculation(services, config(restarted), calculation_id, take_over=True)
    assert stats.outcome is RunOutcome.SPLIT
    assert restarted.messages == [(calculation_id, s) for s in (1, 3, 4, 6, 7)]
    assert (await run_shard(services, config(sent), calculation_id, 1)).outcome is RunOutcome.SPLIT


async def test_a_small_run_is_not_split(services: RunnerServices) -> None:
    calculation_id = await make_calculation(services, "monteCarloPi", {"samples": 10, "seed": 1})
    sent = Sent()
    cfg = config(sent, shard_seconds=2.0)
    assert (await run_calculation(services, cfg, calculation_id)).outcome is RunOutcome.SUCCEEDED
    row = await load(services, calculation_id)
    assert sent.messages == [] and row.shards == 1 and row.shards_done == 0
    assert await shard_rows(services, calculation_id) == []


@pytest.mark.parametrize("kind", sorted(INPUTS))
async def test_the_embedded_queue_runs_shards_to_the_unsplit_result(
    services: RunnerServices, kind: str
) -> None:
    calculation_id = await make_calculation(services, kind, INPUTS[kind])
    cfg = config(None)
    queue = EmbeddedJobQueue(services, cfg, concurrency=3)
    cfg.send_shard = queue.enqueue_shard
    try:
        async with services.bus.subscribe(calculation_id) as subscription:
            await queue.enqueue(calculation_id)
            while True:
                event = await subscription.get(timeout=120)
                assert event is not None, "no event within 120 s"
                if isinstance(event, CalculationEvent) and event.terminal:
                    break
    finally:
        await queue.close()
    row = await load(services, calculation_id)
    assert row.status is CalculationStatus.SUCCEEDED, row.error
    assert row.shards > 1 and row.shards_done == row.shards
    assert row.result == unsplit(kind, INPUTS[kind])


async def test_a_shard_run_by_a_gpu_worker_marks_the_calculation_gpu(
    services: RunnerServices,
) -> None:
    """``device`` says where a calculation ran: a split one is "cpu" until a worker that
    claims shards as "gpu" runs one of them, then "gpu" for good; a CPU worker's later
    shards and the final result do not turn it back."""
    calculation_id, sent = await split(services, "monteCarloPi", PI)
    assert (await load(services, calculation_id)).device == "cpu"
    # The shard's kernel is whatever config.gpu gives; None here: the CPU kernel (the
    # claim's bookkeeping is what is under test).
    await run_shard(services, config(sent, device="gpu"), calculation_id, 0)
    assert (await load(services, calculation_id)).device == "gpu"
    for shard in range(1, 8):
        await run_shard(services, config(sent), calculation_id, shard)
    row = await load(services, calculation_id)
    assert row.status is CalculationStatus.SUCCEEDED and row.device == "gpu"
