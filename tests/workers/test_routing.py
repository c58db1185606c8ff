"""GPU routing (workers/routing.py) on the real database and Redis: which queue a message
goes to, how often the router asks the database, and how the sweeper rescues the
``calculations.gpu`` queue of a GPU worker that died."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, update

from crunchql.compute.monte_carlo_pi import estimate_pi
from crunchql.core.settings import Settings
from crunchql.db.engine import create_engine, create_session_factory, unit_of_work
from crunchql.db.models import Calculation, User, Worker
from crunchql.db.repositories import WorkerRepository
from crunchql.services.container import RunnerServices, Work
from crunchql.workers.broker import GPU_QUEUE_NAME, QUEUE_NAME, CrunchRedisBroker, create_broker
from crunchql.workers.queues import ACTOR_NAME, SHARD_ACTOR_NAME, DramatiqJobQueue
from crunchql.workers.routing import GpuRouter
from crunchql.workers.runner import RunnerConfig, run_calculation

STALE = timedelta(seconds=30)
PI_BIG = Work("monteCarloPi", {"samples": 10**10, "seed": 1})  # ~20 s of one core
PI_SMALL = Work("monteCarloPi", {"samples": 10**8, "seed": 1})  # ~0.2 s


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def session_factory(database_url: str) -> AsyncIterator[Any]:
    engine = create_engine(database_url)
    yield create_session_factory(engine)
    await engine.dispose()


async def beat(factory: Any, device: str, *, at: datetime | None = None) -> str:
    worker_id = f"{device}-{uuid.uuid4().hex[:6]}"
    async with unit_of_work(factory) as session:
        await WorkerRepository(session).beat(
            worker_id, "host", 1, at or datetime.now(UTC), device=device
        )
    return worker_id


async def go_quiet(factory: Any, worker_id: str) -> None:
    """The worker's last heartbeat is older than the stale period (it died)."""
    async with unit_of_work(factory) as session:
        await session.execute(
            update(Worker)
            .where(Worker.id == worker_id)
            .values(last_seen_at=datetime.now(UTC) - timedelta(minutes=5))
        )


async def test_routes_by_kind_cost_and_a_live_gpu_worker(session_factory: Any) -> None:
    clock = Clock()
    router = GpuRouter(session_factory, min_cost=1.0, stale_after=STALE, clock=clock)
    assert await router.queue_for(PI_BIG) == QUEUE_NAME  # no worker at all
    await beat(session_factory, "cpu")
    clock.now += 1.0
    assert await router.queue_for(PI_BIG) == QUEUE_NAME  # CPU workers only
    gpu = await beat(session_factory, "gpu")
    clock.now += 1.0
    assert await router.queue_for(PI_BIG) == GPU_QUEUE_NAME
    assert await router.queue_for(PI_SMALL) == QUEUE_NAME  # below CRUNCHQL_GPU_MIN_COST
    assert await router.queue_for(None) == QUEUE_NAME  # nothing to judge it by
    # No GPU kernel: the CPU, however large.
    assert await router.queue_for(Work("primeCount", {"limit": 10**10})) == QUEUE_NAME
    assert await router.queue_for(Work("nBody", {"bodies": 5000, "steps": 1000})) == QUEUE_NAME
    asian = {"style": "ASIAN", "paths": 10**6, "steps": 252}  # 12.6 s
    assert await router.queue_for(Work("optionPricing", asian)) == GPU_QUEUE_NAME
    european = {"style": "EUROPEAN", "paths": 10**7, "steps": 252}  # 1 step: 0.5 s
    assert await router.queue_for(Work("optionPricing", european)) == QUEUE_NAME
    picture = {"width": 2048, "height": 2048, "maxIterations": 1000}  # bound: 16.8 s
    assert await router.queue_for(Work("mandelbrot", picture)) == GPU_QUEUE_NAME
    # A shard is judged on its share: 20 s in 8 shards is 2.5 s each, in 64 0.3 s.
    assert await router.queue_for(Work(PI_BIG.kind, PI_BIG.input, 8)) == GPU_QUEUE_NAME
    assert await router.queue_for(Work(PI_BIG.kind, PI_BIG.input, 64)) == QUEUE_NAME
    # The GPU worker dies: trusted for the cache period, then the CPU.
    await go_quiet(session_factory, gpu)
    assert await router.queue_for(PI_BIG) == GPU_QUEUE_NAME
    clock.now += 1.0
    assert await router.queue_for(PI_BIG) == QUEUE_NAME
    # Routing off.
    off = GpuRouter(session_factory, min_cost=-1, stale_after=STALE)
    await beat(session_factory, "gpu")
    assert await off.queue_for(PI_BIG) == QUEUE_NAME


async def test_submits_ask_the_database_at_most_once_per_cache_period(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    factory = create_session_factory(engine)
    statements: list[str] = []
    event.listen(
        engine.sync_engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_rest: statements.append(statement),
    )
    try:
        clock = Clock()
        router = GpuRouter(factory, min_cost=1.0, stale_after=STALE, clock=clock)
        await beat(factory, "gpu")
        statements.clear()
        for _ in range(50):
            assert await router.queue_for(PI_BIG) == GPU_QUEUE_NAME
            assert await router.queue_for(PI_SMALL) == QUEUE_NAME  # never asks
        assert len([s for s in statements if "workers" in s]) == 1
        clock.now += 1.0
        await router.queue_for(PI_BIG)
        assert len([s for s in statements if "workers" in s]) == 2
    finally:
        await engine.dispose()


async def make_calculation(factory: Any, raw: dict[str, Any]) -> uuid.UUID:
    async with unit_of_work(factory) as session:
        user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
        session.add(user)
        await session.flush()
        calculation = Calculation(owner_id=user.id, kind="monteCarloPi", input=raw)
        session.add(calculation)
        await session.flush()
        return calculation.id


def waiting(broker: CrunchRedisBroker, queue_name: str) -> list[tuple[str, tuple[Any, ...]]]:
    """(actor, args) of the messages waiting in ``queue_name``, taken off it."""
    taken = broker.take_all(queue_name)
    broker.ack_taken(taken)
    return sorted((message.actor_name, tuple(message.args)) for _, message in taken)


async def test_the_queue_sends_each_message_where_the_router_says(
    session_factory: Any, broker: CrunchRedisBroker
) -> None:
    queue = DramatiqJobQueue(broker, GpuRouter(session_factory, min_cost=1.0, stale_after=STALE))
    await beat(session_factory, "gpu")
    big = await make_calculation(session_factory, dict(PI_BIG.input))
    small = await make_calculation(session_factory, dict(PI_SMALL.input))
    await queue.enqueue(big, PI_BIG)
    await queue.enqueue(small, PI_SMALL)
    # Known only by id (a hand-back, a re-send): the row is read, since a GPU is alive.
    await queue.enqueue(big)
    await queue.enqueue(small)
    await queue.enqueue_shard(big, 0, Work(PI_BIG.kind, PI_BIG.input, 4))  # 5 s each
    await queue.enqueue_shard(big, 1, Work(PI_BIG.kind, PI_BIG.input, 100))  # 0.2 s each
    assert waiting(broker, GPU_QUEUE_NAME) == sorted(
        [(ACTOR_NAME, (str(big),)), (ACTOR_NAME, (str(big),)), (SHARD_ACTOR_NAME, (str(big), 0))]
    )
    assert waiting(broker, QUEUE_NAME) == sorted(
        [(ACTOR_NAME, (str(small),)), (ACTOR_NAME, (str(small),)),
         (SHARD_ACTOR_NAME, (str(big), 1))]
    )  # fmt: skip
    # Without a router (the embedded mode's callers, old wiring): the CPU queue.
    await DramatiqJobQueue(broker).enqueue(big, PI_BIG)
    assert waiting(broker, QUEUE_NAME) == [(ACTOR_NAME, (str(big),))]


async def test_the_sweep_moves_a_dead_gpu_workers_queue_to_the_cpu_queue(
    database_url: str, redis_url: str, broker: CrunchRedisBroker
) -> None:
    """A GPU worker dies with messages in calculations.gpu, one of them already fetched
    by it: once no GPU worker is alive, the sweep sends them all to the CPU queue, and a
    CPU worker runs the calculation (device "cpu", the CPU kernel's result)."""
    from crunchql.workers.lifecycle import WorkerRuntime

    settings = Settings(
        _env_file=None, database_url=database_url, redis_url=redis_url,  # type: ignore[call-arg]
        gpu_min_cost=1e-6, worker_stale_seconds=30,
    )  # fmt: skip
    runtime = await WorkerRuntime.create(settings, broker)
    dead_consumer = create_broker(redis_url)
    try:
        factory = runtime.services.session_factory
        gpu = await beat(factory, "gpu")
        raw = {"samples": 5_000, "seed": 77}  # 1e-5 s of one core: above 1e-6
        first = await make_calculation(factory, raw)
        second = await make_calculation(factory, raw)
        await runtime.queue.enqueue(first, Work("monteCarloPi", raw))
        await runtime.queue.enqueue(second, Work("monteCarloPi", raw))
        await runtime.queue.enqueue_shard(first, 3, Work("monteCarloPi", raw))
        # The GPU worker had fetched one message (prefetch) when it died: it sits in that
        # consumer's unacknowledged set, and its broker heartbeat is long gone.
        assert len(dead_consumer.do_fetch(GPU_QUEUE_NAME, 1)) == 1
        dead_consumer.client.zadd("crunchql:__heartbeats__", {dead_consumer.broker_id: 0})
        # While the GPU worker is alive nothing moves.
        assert await runtime.sweep_once() == 0
        assert broker.do_qsize(GPU_QUEUE_NAME) == 3 and broker.do_qsize(QUEUE_NAME) == 0
        await go_quiet(factory, gpu)
        assert await runtime.sweep_once() == 3
        assert broker.do_qsize(GPU_QUEUE_NAME) == 0
        assert waiting(broker, QUEUE_NAME) == sorted(
            [(ACTOR_NAME, (str(first),)), (ACTOR_NAME, (str(second),)),
             (SHARD_ACTOR_NAME, (str(first), 3))]
        )  # fmt: skip
        assert await runtime.sweep_once() == 0  # nothing left to move
        # A CPU worker runs it: device "cpu", the CPU kernel's result.
        services = RunnerServices(factory, runtime.services.bus)
        config = RunnerConfig(worker_id="cpu-worker", publish_interval=0, write_interval=0)
        await run_calculation(services, config, first)
        async with unit_of_work(factory) as session:
            row = await session.get(Calculation, first)
        assert row is not None and row.status == "SUCCEEDED" and row.device == "cpu"
        assert row.result == estimate_pi(5_000, 77)
    finally:
        dead_consumer.close()
        await runtime.close()
