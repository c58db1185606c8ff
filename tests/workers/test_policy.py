"""The one run-with-policy function, driven the two ways calculations are run: the
``calculation.run`` actor on Dramatiq's stub broker and worker, and the embedded queue.

Infrastructure trouble is simulated where it really strikes, in the claim's database
round trip; everything else is the real runner on the real database.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dramatiq
import pytest
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.brokers.stub import StubBroker
from sqlalchemy.exc import IntegrityError, OperationalError

from crunchql.compute.catalog import KINDS
from crunchql.core.lifecycle import CalculationStatus, RetryPolicy, RunOutcome
from crunchql.db.engine import create_engine, create_session_factory
from crunchql.db.repositories import CalculationRepository
from crunchql.pubsub.bus import InProcessEventBus
from crunchql.services.container import RunnerServices, Work
from crunchql.workers import runner
from crunchql.workers.broker import QUEUE_NAME, standard_middleware
from crunchql.workers.queues import ACTOR_NAME, DramatiqJobQueue, EmbeddedJobQueue, run_message
from crunchql.workers.runner import GAVE_UP, INTERNAL_FAILURE, RunnerConfig
from tests.workers.test_runner import fake_kind, load, make_calculation

# Fast backoff: the policy's numbers, not its timing, are under test here.
POLICY = RetryPolicy(max_retries=2, min_backoff_seconds=0.01, max_backoff_seconds=0.05)
DEADLINE = 120.0  # generous: the first run of a kind on a loaded machine


@dataclass
class FlakyClaims:
    """Makes the first ``failures`` claims fail with ``error``, then claims for real."""

    failures: int
    error: Exception
    calls: int = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = CalculationRepository.claim
        lock = threading.Lock()

        async def claim(repo: CalculationRepository, *args: Any, **kwargs: Any) -> Any:
            with lock:
                self.calls += 1
                fail = self.calls <= self.failures
            if fail:
                raise self.error
            return await real(repo, *args, **kwargs)

        monkeypatch.setattr(CalculationRepository, "claim", claim)


def database_down() -> OperationalError:
    return OperationalError("UPDATE calculations ...", {}, ConnectionRefusedError("db down"))


def a_bug() -> IntegrityError:
    # A DBAPIError that is not a lost connection: retrying would fail the same way.
    return IntegrityError("UPDATE calculations ...", {}, ValueError("constraint"))


def config(**overrides: Any) -> RunnerConfig:
    values: dict[str, Any] = {
        "worker_id": f"policy-{uuid.uuid4().hex[:6]}",
        "publish_interval": 0.0,
        "write_interval": 0.0,
        "retry": POLICY,
    }
    values.update(overrides)
    return RunnerConfig(**values)


# ---- the two ways to run a calculation ----------------------------------------------


class DramatiqPath:
    """The ``calculation.run`` actor's body on a stub broker with the production
    middleware (Retries, CurrentMessage, AsyncIO): retries are real redeliveries."""

    def __init__(self, database_url: str, cfg: RunnerConfig) -> None:
        self.database_url = database_url
        self.config = cfg
        self.broker = StubBroker(middleware=standard_middleware())
        self.broker.emit_after("process_boot")
        self.deliveries: list[int] = []
        self._services: RunnerServices | None = None
        self.executor = ThreadPoolExecutor(max_workers=1)

        async def run(calculation_id: str) -> None:
            message = dramatiq.middleware.CurrentMessage.get_current_message()
            self.deliveries.append(int(message.options.get("retries", 0)) if message else -1)
            # Built on Dramatiq's own event loop: async engines belong to one loop.
            if self._services is None:
                engine = create_engine(self.database_url)
                self._services = RunnerServices(create_session_factory(engine), InProcessEventBus())
            await run_message(self._services, self.config, self.executor, calculation_id)

        dramatiq.actor(actor_name=ACTOR_NAME, queue_name=QUEUE_NAME, broker=self.broker)(run)
        self.worker = dramatiq.Worker(self.broker, worker_threads=1, worker_timeout=50)

    def run(self, calculation_id: uuid.UUID, work: Work | None = None) -> None:
        self.worker.start()
        try:
            # The message the API sends (with ``work``: what it computes, for a quick run).
            self.broker.enqueue(DramatiqJobQueue._run_message(calculation_id, work=work))
            # Waits for the message and every redelivery it asks for (the delay queue).
            self.broker.join(QUEUE_NAME, timeout=int(DEADLINE * 1000))
            self.worker.join()
        finally:
            loop_thread = get_event_loop_thread()
            if self._services is not None and loop_thread is not None:
                engine = self._services.session_factory.kw["bind"]
                loop_thread.run_coroutine(engine.dispose())
            self.worker.stop()
            self.broker.close()
            self.executor.shutdown()


class EmbeddedPath:
    def __init__(self, services: RunnerServices, cfg: RunnerConfig) -> None:
        self.queue = EmbeddedJobQueue(services, cfg)

    async def run(self, calculation_id: uuid.UUID, work: Work | None = None) -> None:
        await self.queue.enqueue(calculation_id, work)
        tasks = list(self.queue._tasks)
        await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
        await self.queue.close()


@pytest.fixture(params=["dramatiq", "embedded"])
def path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def run_through(
    path: str, database_url: str, services: RunnerServices, calculation_id: uuid.UUID
) -> list[int]:
    """Runs the calculation to the end of its deliveries; the retry counts Dramatiq
    delivered it with (empty for the embedded queue, which keeps its own count)."""
    if path == "dramatiq":
        dramatiq_path = DramatiqPath(database_url, config())
        await asyncio.to_thread(dramatiq_path.run, calculation_id)
        return dramatiq_path.deliveries
    await EmbeddedPath(services, config()).run(calculation_id)
    return []


@pytest.fixture
def quick_kind(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setitem(KINDS, "quick", fake_kind("quick", lambda _n: None, steps=3))
    yield "quick"


async def test_the_api_s_message_runs_a_tiny_calculation_quickly_through_each_queue(
    path: str, database_url: str, services: RunnerServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The work the API puts on the message reaches the runner through the actor (the
    message option, via CurrentMessage) and through the embedded queue, and the tiny run
    is stored by the quick statement. When that statement fails (database trouble), the
    actor's retry is a real redelivery that runs it quickly again (version 1: never
    claimed); the embedded queue's retry takes the run over (its runs are all its own),
    which is the ordinary path (a claim and a finish: version 2)."""
    tiny = KINDS["monteCarloPi"].validate({"samples": 1000, "seed": 5})
    calculation_id = await make_calculation(services, "monteCarloPi", tiny)
    real = runner.store_quick_result
    calls = 0

    async def flaky_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise database_down()
        return await real(*args, **kwargs)

    monkeypatch.setattr(runner, "store_quick_result", flaky_once)
    cfg = config(quick_run_seconds=0.01)
    work = Work("monteCarloPi", tiny)
    if path == "dramatiq":
        dramatiq_path = DramatiqPath(database_url, cfg)
        await asyncio.to_thread(dramatiq_path.run, calculation_id, work)
        assert dramatiq_path.deliveries == [0, 1]
        assert calls == 2 and await version_of(services, calculation_id) == 1
    else:
        await EmbeddedPath(services, cfg).run(calculation_id, work)
        assert calls == 1 and await version_of(services, calculation_id) == 2
    row = await load(services, calculation_id)
    assert row.status is CalculationStatus.SUCCEEDED and row.attempts == 1
    assert row.result is not None and row.result["samples"] == 1000


async def version_of(services: RunnerServices, calculation_id: uuid.UUID) -> int:
    return (await load(services, calculation_id)).version


async def test_a_transient_failure_is_retried_and_the_run_then_succeeds(
    path: str, database_url: str, services: RunnerServices, quick_kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    flaky = FlakyClaims(failures=2, error=database_down())
    flaky.install(monkeypatch)
    calculation_id = await make_calculation(services, quick_kind, {})
    deliveries = await run_through(path, database_url, services, calculation_id)
    row = await load(services, calculation_id)
    assert row.status is CalculationStatus.SUCCEEDED and row.result == {"steps": 3}
    assert flaky.calls == 3  # two failed claims, then the run
    assert row.attempts == 1  # failed claims never started a run
    if path == "dramatiq":
        assert deliveries == [0, 1, 2]


async def test_transient_failures_are_retried_up_to_the_limit_then_failed(
    path: str, database_url: str, services: RunnerServices, quick_kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    flaky = FlakyClaims(failures=1000, error=database_down())
    flaky.install(monkeypatch)
    calculation_id = await make_calculation(services, quick_kind, {})
    deliveries = await run_through(path, database_url, services, calculation_id)
    row = await load(services, calculation_id)
    assert row.status is CalculationStatus.FAILED and row.error == GAVE_UP
    assert flaky.calls == 1 + POLICY.max_retries
    if path == "dramatiq":
        assert deliveries == [0, 1, 2]


async def test_a_permanent_failure_is_not_retried(
    path: str, database_url: str, services: RunnerServices, quick_kind: str,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    flaky = FlakyClaims(failures=1000, error=a_bug())
    flaky.install(monkeypatch)
    calculation_id = await make_calculation(services, quick_kind, {})
    with caplog.at_level(logging.ERROR, logger="crunchql.runner"):
        deliveries = await run_through(path, database_url, services, calculation_id)
    row = await load(services, calculation_id)
    assert row.status is CalculationStatus.FAILED and row.error == INTERNAL_FAILURE
    assert flaky.calls == 1
    assert any(r.exc_info and isinstance(r.exc_info[1], IntegrityError) for r in caplog.records)
    if path == "dramatiq":
        assert deliveries == [0]


async def test_a_worker_stopping_mid_run_hands_back_without_counting_a_retry(
    path: str, database_url: str, services: RunnerServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    requeued: list[uuid.UUID] = []

    async def requeue(calculation_id: uuid.UUID) -> None:
        requeued.append(calculation_id)

    cfg = config(requeue=requeue)
    monkeypatch.setitem(
        KINDS, "handback", fake_kind("handback", lambda n: n == 1 and cfg.stopping.set(), steps=9)
    )
    calculation_id = await make_calculation(services, "handback", {})
    if path == "dramatiq":
        dramatiq_path = DramatiqPath(database_url, cfg)
        await asyncio.to_thread(dramatiq_path.run, calculation_id)
        assert dramatiq_path.deliveries == [0]  # handed back, not redelivered as a retry
    else:
        await EmbeddedPath(services, cfg).run(calculation_id)
    row = await load(services, calculation_id)
    assert row.status is CalculationStatus.QUEUED and row.worker_id is None
    assert row.error is None and row.attempts == 1
    assert requeued == [calculation_id]  # a fresh message, with a fresh retry count


async def test_trouble_while_stopping_hands_back_instead_of_retrying(
    services: RunnerServices, quick_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crunchql.workers.runner import run_with_policy

    requeued: list[uuid.UUID] = []

    async def requeue(calculation_id: uuid.UUID) -> None:
        requeued.append(calculation_id)

    cfg = config(requeue=requeue)
    calculation_id = await make_calculation(services, quick_kind, {})
    real = CalculationRepository.claim

    async def claim_then_stop(repo: CalculationRepository, *args: Any, **kwargs: Any) -> Any:
        cfg.stopping.set()  # the worker is told to stop, and then the database goes away
        raise database_down()

    monkeypatch.setattr(CalculationRepository, "claim", claim_then_stop)
    stats = await run_with_policy(services, cfg, calculation_id, retries=POLICY.max_retries)
    assert stats.outcome is RunOutcome.RELEASED  # not FAILED, although no retry was left
    assert requeued == [calculation_id]
    monkeypatch.setattr(CalculationRepository, "claim", real)
    assert (await load(services, calculation_id)).status is CalculationStatus.QUEUED


async def test_closing_the_embedded_queue_lets_runs_in_flight_finish(
    services: RunnerServices, quick_kind: str
) -> None:
    """A stopping API process does not cut short the runs it has in flight: they end
    (SUCCEEDED here) instead of being cancelled mid-statement and left RUNNING."""
    queue = EmbeddedJobQueue(services, config())
    ids = [await make_calculation(services, quick_kind, {}) for _ in range(6)]
    for calculation_id in ids:
        await queue.enqueue(calculation_id)
    await queue.close()  # at once: every run is still in flight
    rows = [await load(services, calculation_id) for calculation_id in ids]
    assert [row.status for row in rows] == [CalculationStatus.SUCCEEDED] * len(ids)


async def test_closing_the_embedded_queue_cancels_what_outlasts_its_grace(
    services: RunnerServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run still going after the grace is cancelled; its row stays RUNNING, for the
    next start to take over (``recover``)."""
    started, release = threading.Event(), threading.Event()

    def stuck(_count: int) -> None:
        started.set()
        release.wait(DEADLINE)

    monkeypatch.setitem(KINDS, "stuck", fake_kind("stuck", stuck, steps=1))
    queue = EmbeddedJobQueue(services, config())
    calculation_id = await make_calculation(services, "stuck", {})
    await queue.enqueue(calculation_id)
    try:
        assert await asyncio.to_thread(started.wait, DEADLINE)
        await asyncio.wait_for(queue.close(grace=0.2), DEADLINE)
        assert not queue._tasks
    finally:
        release.set()
    row = await load(services, calculation_id)
    assert row.status is CalculationStatus.RUNNING
