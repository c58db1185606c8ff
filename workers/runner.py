"""Runs one calculation: claim → kernel chunk by chunk → save → publish.

:func:`run_with_policy` is what the Dramatiq actor (worker processes) and the embedded
in-process queue both call: one delivery of a calculation, with the retry policy
applied. The database row is the source of truth: a duplicate message finds nothing
to claim, a cancel is seen at the next progress write, and a run whose worker died is
claimed again once its heartbeat is stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from crunchql.compute.base import Job, ParameterError
from crunchql.compute.catalog import KINDS
from crunchql.compute.devices import cpu_cost, has_gpu_kernel
from crunchql.core.lifecycle import CalculationEvent, CalculationStatus, RetryPolicy, RunOutcome
from crunchql.core.logging import bind_log_context
from crunchql.db.engine import single_statement, unit_of_work
from crunchql.db.models import Calculation
from crunchql.db.repositories import CalculationRepository, ShardRepository
from crunchql.db.repositories.calculation import store_quick_result
from crunchql.observability.metrics import record_finished
from crunchql.services.container import Infrastructure, Work

logger = logging.getLogger("crunchql.runner")
GAVE_UP = "Gave up after repeated infrastructure errors."
INTERNAL_FAILURE = "The calculation could not be completed (an internal error)."


class TransientError(Exception):
    """Infrastructure trouble (database, Redis): the message is retried."""


@dataclass
class RunnerConfig:
    worker_id: str
    publish_interval: float = 0.1
    write_interval: float = 0.5
    stale_after: timedelta = timedelta(seconds=30)
    # Set when the process is shutting down: a run stops at its next chunk boundary,
    # hands the calculation back (QUEUED) and asks for it to be queued again.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    requeue: Callable[[uuid.UUID], Awaitable[None]] | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Splitting a large calculation into shards: their target cost in seconds of one
    # core (0: never split) and how a shard is sent to run (None: never split).
    shard_seconds: float = 0.0
    send_shard: Callable[[uuid.UUID, int, Work | None], Awaitable[None]] | None = None
    # Fair share: an owner's calculations beyond this many running are not claimed;
    # their message is dropped and sent again when one of the owner's runs ends.
    max_running_per_user: int | None = None
    # What this worker runs kernels on, written on what it claims ("cpu" or "gpu"), and
    # for "gpu" the GPU jobs (compute.gpu.jobs.start / start_shard, set by a GPU worker
    # so that nothing else imports numba.cuda).
    device: str = "cpu"
    gpu: GpuJobs | None = None
    # Quick runs: a calculation whose message says what it computes (kind and input) and
    # that is estimated at no more than this many seconds of one core is computed first
    # and then stored QUEUED → SUCCEEDED in one statement, never claimed (0: never).
    quick_run_seconds: float = 0.0


class GpuJobs(Protocol):
    def start(self, kind: str, params: Mapping[str, Any]) -> Job: ...

    def start_shard(self, kind: str, params: Mapping[str, Any], shard: int, shards: int) -> Job: ...


@dataclass(frozen=True)
class RunStats:
    outcome: RunOutcome = RunOutcome.SKIPPED
    kind: str | None = None
    seconds: float = 0.0


def _now() -> datetime:
    return datetime.now(UTC)


# Announcements still on their way, by calculation: the next event of the calculation
# waits for its one, so that subscribers get every calculation's events in order.
_in_flight: dict[uuid.UUID, asyncio.Task[None]] = {}


async def _publish(services: Infrastructure, event: CalculationEvent) -> None:
    earlier = _in_flight.get(event.id)
    if earlier is not None and earlier is not asyncio.current_task():
        await asyncio.wait([earlier])  # not cancelled with us: it still goes out
    try:
        await services.bus.publish(event)
    except Exception as error:  # the row is saved; subscribers re-read it on a resync
        logger.warning("could not publish a %s event: %s", event.kind.value, error)


async def _announce(services: Infrastructure, calculation: Calculation) -> None:
    await _publish(services, CalculationEvent.status_change(calculation.to_snapshot()))


def _announce_meanwhile(services: Infrastructure, calculation: Calculation) -> None:
    """:func:`_announce` while the caller goes on (the kernel starts as the RUNNING event
    travels: one Redis round trip less before the result); the calculation's next event
    waits for this one."""
    key = calculation.id
    task = asyncio.create_task(_announce(services, calculation))
    _in_flight[key] = task

    def forget(done: asyncio.Task[None]) -> None:
        if _in_flight.get(key) is done:
            del _in_flight[key]

    task.add_done_callback(forget)


async def run_with_policy(
    services: Infrastructure,
    config: RunnerConfig,
    calculation_id: uuid.UUID,
    executor: Executor | None = None,
    *,
    retries: int = 0,
    take_over: bool = False,
    work: Work | None = None,
) -> RunStats:
    """One delivery of a calculation, and what its failures mean (``config.retry``).

    ``retries`` is how many times this calculation was already retried (the caller
    keeps the count: Dramatiq's message, the embedded queue's loop). ``work``: what the
    message says the calculation computes, for a quick run (:func:`quick_run`).

    - Shutting down: the calculation is handed back untouched (re-sent with a fresh
      retry count: a hand-back is not a failure), and so is a run that infrastructure
      trouble interrupts while the worker stops.
    - Infrastructure trouble (database, Redis) with retries left: the run is handed
      back QUEUED and the outcome is RETRY: deliver it again after
      ``config.retry.backoff(retries)``, with ``retries + 1``.
    - The same with no retries left: FAILED, "Gave up after repeated infrastructure
      errors."
    - Anything else escaping the runner (a bug): FAILED at once, never retried, the
      detail logged. (Errors in the input or a kernel are FAILED by the runner itself.)

    Finished runs are counted in the metrics here, once.
    """
    if config.stopping.is_set():
        await _hand_back(services, config, calculation_id, claimed=False)
        return RunStats()
    try:
        stats = None
        if work is not None and not take_over and is_quick(config, work):
            stats = await quick_run(services, config, calculation_id, work, executor)
        if stats is None:
            stats = await run_calculation(
                services, config, calculation_id, executor, take_over=take_over
            )
    except Exception as error:
        if not is_transient(error):
            logger.exception("calculation %s: the runner failed", calculation_id)
            stats = await _give_up(services, calculation_id, INTERNAL_FAILURE)
        elif config.stopping.is_set():
            logger.warning("calculation %s handed back: %s while stopping", calculation_id, error)
            await _hand_back(services, config, calculation_id)
            return RunStats(RunOutcome.RELEASED)
        elif not config.retry.gives_up(retries):
            logger.warning(
                "calculation %s: transient error (retry %d of %d follows): %s",
                calculation_id, retries + 1, config.retry.max_retries, error,
            )  # fmt: skip
            await release(services, config, calculation_id)
            return RunStats(RunOutcome.RETRY)
        else:
            logger.error("calculation %s: giving up after %d retries: %s", calculation_id,
                         retries, error)  # fmt: skip
            stats = await _give_up(services, calculation_id, GAVE_UP)
    if stats.kind and stats.outcome.is_run:
        record_finished(stats.kind, stats.outcome, stats.seconds)
    return stats


async def run_calculation(
    services: Infrastructure,
    config: RunnerConfig,
    calculation_id: uuid.UUID,
    executor: Executor | None = None,
    *,
    take_over: bool = False,
) -> RunStats:
    """Claim and run the calculation once. Infrastructure errors propagate (the policy
    in :func:`run_with_policy` decides); everything about the calculation itself (bad
    input, a kernel error, the time limit, a cancel, a shutdown) is settled here."""
    factory = services.session_factory
    now = _now()
    stale_before = now if take_over else now - config.stale_after
    parked_for = None
    # Each path commits by itself (claim_or_park: one call on PostgreSQL).
    async with single_statement(factory) as session:
        repo = CalculationRepository(session)
        if config.max_running_per_user is None:
            calculation = await repo.claim(
                calculation_id, config.worker_id, now, stale_before, device=config.device
            )
        else:
            # Refused at the owner's running limit, it stays QUEUED, parked: it waits
            # without holding this worker; the owner's next finishing run sends it again.
            calculation, parked_for = await repo.claim_or_park(
                calculation_id,
                config.worker_id,
                now,
                stale_before,
                max_running=config.max_running_per_user,
                alive_after=now - config.stale_after,
                device=config.device,
            )
    if calculation is None:
        if parked_for is not None:
            # A run of the owner may have ended between our count and our commit, its
            # finish then missing this row: if a slot is free now, send parked ones.
            await _start_waiting(services, config, parked_for, only_if_free=True)
        # Finished, cancelled, alive on another worker, or parked.
        return RunStats()
    bind_log_context(calculation_id=str(calculation_id), kind=calculation.kind)
    _announce_meanwhile(services, calculation)
    started = time.monotonic()
    owner = _OwnerWake()
    try:
        outcome = await _execute(
            services, config, calculation, executor, owner, take_over=take_over
        )
    finally:
        if not owner.done:  # the finish did not already (a cancel, a hand-back, an error)
            await _start_waiting(services, config, calculation.owner_id)
    return RunStats(outcome, calculation.kind, time.monotonic() - started)


def is_quick(config: RunnerConfig, work: Work) -> bool:
    """Whether ``work`` is small enough for a quick run on this worker: a CPU worker, one
    piece (not a shard), and an estimated cost within ``config.quick_run_seconds`` (the
    kinds without an estimate never are)."""
    if config.quick_run_seconds <= 0 or config.gpu is not None or work.shards != 1:
        return False
    cost = cpu_cost(work.kind, work.input)
    return cost is not None and cost <= config.quick_run_seconds


def _compute_whole(job: Job) -> tuple[dict[str, Any], float]:
    """A quick run's job from start to result, in the kernel thread."""
    started = time.perf_counter()
    while not job.done:
        job.step()
    return job.result(), time.perf_counter() - started


async def quick_run(
    services: Infrastructure,
    config: RunnerConfig,
    calculation_id: uuid.UUID,
    work: Work,
    executor: Executor | None = None,
) -> RunStats | None:
    """A tiny calculation without a claim: compute what the message says, then store it
    QUEUED → SUCCEEDED in one conditional statement, and announce it.

    The claim, the RUNNING event and the owner's running slot cost more than such a run
    computes (a claim is a statement and a round trip; a 1,000-sample monteCarloPi,
    a quarter of a millisecond). Nothing is lost by skipping them: the row stays QUEUED
    while it computes, so a crash leaves it to be delivered again, a cancel meanwhile
    makes the statement find nothing, and a duplicate message finds it finished. The
    statement stores the result only for the stored kind and input, on a row nobody
    claimed, parked or split. Whenever it stores nothing, or the kernel raises, the
    calculation takes the ordinary path (None is returned), which reports errors and
    takes over stale runs as always; the few microseconds computed are thrown away.

    The kernel still runs in the kernel thread: numba's parallel regions must not
    overlap with another job's."""
    kind = KINDS.get(work.kind)
    if kind is None:
        return None
    loop = asyncio.get_running_loop()
    started_at = _now()
    try:
        job = kind.start(work.input)
        result, seconds = await loop.run_in_executor(executor, _compute_whole, job)
    except Exception as error:
        logger.info("calculation %s: quick run failed (%s); running it the usual way",
                    calculation_id, type(error).__name__)  # fmt: skip
        return None
    # With the other quick runs' results of this turn, in one round trip (db.batches).
    row = await store_quick_result(
        services.session_factory,
        calculation_id,
        config.worker_id,
        kind=work.kind,
        params=dict(work.input),
        started=started_at,
        now=_now(),
        result=result,
        device=config.device,
    )
    if row is None:
        return None
    await _announce(services, row)
    return RunStats(RunOutcome.SUCCEEDED, row.kind, seconds)


@dataclass
class _OwnerWake:
    """Whether a run's end already sent its owner's parked calculations again (the
    finish does, in the same statement); if not, the runner does once the run ends."""

    done: bool = False


def _wake_limit(config: RunnerConfig) -> int | None:
    """How many of the owner's parked calculations a run's end sends again (None: the
    owner has no running cap, or nothing here can send them)."""
    return None if config.requeue is None else config.max_running_per_user


async def _send_again(config: RunnerConfig, calculation_ids: list[uuid.UUID]) -> None:
    assert config.requeue is not None
    for calculation_id in calculation_ids:
        await config.requeue(calculation_id)


async def _start_waiting(
    services: Infrastructure,
    config: RunnerConfig,
    owner_id: uuid.UUID,
    *,
    only_if_free: bool = False,
) -> None:
    """One of the owner's runs ended: send the owner's oldest parked calculations again
    (their messages were dropped at the running limit), and only those: a QUEUED row
    whose message is still in the queue gets no duplicate. ``only_if_free``: only while
    the owner has a free slot. A send that is lost here is re-sent by the sweeper."""
    limit = _wake_limit(config)
    if limit is None:
        return
    try:
        # One UPDATE … RETURNING, committed by itself.
        async with single_statement(services.session_factory) as session:
            waiting = await CalculationRepository(session).take_parked(
                owner_id,
                limit,
                max_running=limit if only_if_free else None,
                alive_after=_now() - config.stale_after,
            )
        await _send_again(config, waiting)
    except Exception as error:
        logger.warning("could not wake the owner's waiting calculations: %s", error)


async def _finish(
    services: Infrastructure,
    config: RunnerConfig,
    calculation: Calculation,
    status: CalculationStatus,
    version: int,
    owner: _OwnerWake,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> RunOutcome:
    # One conditional UPDATE, and under a running cap the release of the owner's parked
    # calculations: one statement (PostgreSQL), committed before the event goes out.
    async with single_statement(services.session_factory) as session:
        row, waiting = await CalculationRepository(session).finish_and_wake(
            calculation.id,
            config.worker_id,
            owner_id=calculation.owner_id,
            status=status,
            now=_now(),
            version=version,
            result=result,
            error=error,
            wake=_wake_limit(config),
        )
    owner.done = True
    if row is not None:
        await _announce(services, row)
    if waiting:
        try:
            await _send_again(config, waiting)
        except Exception as error:  # released: the sweeper re-sends them
            logger.warning("could not wake the owner's waiting calculations: %s", error)
    if row is None:
        return RunOutcome.CANCELLED  # cancelled (or taken over) while we ran: nothing stored
    return RunOutcome.FAILED if status is CalculationStatus.FAILED else RunOutcome.SUCCEEDED


class KernelError(Exception):
    """A kind's own code failed (bad parameters it let through, a bug): FAILED at once,
    never retried, with a message for the user."""


def _timed_step(job: Job) -> float:
    """One chunk, in the kernel thread; returns the seconds it computed."""
    started = time.perf_counter()
    try:
        job.step()
    except Exception as error:
        raise KernelError(f"{type(error).__name__}: {error}") from error
    return time.perf_counter() - started


def _kernel_call(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as error:
        raise KernelError(f"{type(error).__name__}: {error}") from error


async def _execute(
    services: Infrastructure,
    config: RunnerConfig,
    calculation: Calculation,
    executor: Executor | None,
    owner: _OwnerWake,
    *,
    take_over: bool = False,
) -> RunOutcome:
    loop = asyncio.get_running_loop()
    kind = KINDS.get(calculation.kind)
    version = calculation.version

    async def fail(message: str) -> RunOutcome:
        return await _finish(
            services, config, calculation, CalculationStatus.FAILED, version + 1, owner,
            error=message,
        )  # fmt: skip

    if kind is None:
        return await fail(f"Unknown calculation kind {calculation.kind!r}.")
    if config.gpu is not None and not has_gpu_kernel(kind.name) and calculation.shards == 1:
        # Not routed here by the service (a message from an older release, a hand
        # edit): a CPU worker runs it.
        await _hand_back(services, config, calculation.id)
        logger.info("calculation %s (%s) handed to the CPU queue", calculation.id, kind.name)
        return RunOutcome.RELEASED
    try:
        params = kind.validate(calculation.input)
        gpu = config.gpu if calculation.shards == 1 else None  # a split one: dispatch only
        job = kind.start(params) if gpu is None else gpu.start(kind.name, params)
    except ParameterError as error:
        return await fail(f"Invalid input: {error.message}")
    except Exception as error:
        logger.exception("starting %s failed", calculation.id)
        return await fail(f"The {calculation.kind} kernel failed: {type(error).__name__}: {error}")
    if config.send_shard is not None and (calculation.shards > 1 or config.shard_seconds > 0):
        try:
            shards = calculation.shards
            if shards == 1 and kind.plan_shards_computes():  # an estimate runs a kernel
                shards = await loop.run_in_executor(
                    executor, kind.plan_shards, calculation.input, config.shard_seconds
                )
            elif shards == 1:  # arithmetic: no hop to the kernel thread and back
                shards = kind.plan_shards(calculation.input, config.shard_seconds)
        except Exception as error:
            logger.exception("planning the shards of %s failed", calculation.id)
            return await fail(f"The {calculation.kind} kernel failed: {error}")
        if shards > 1:
            return await _dispatch_shards(services, config, calculation, shards, take_over)
    # The limit counts this job's own computing time, not time spent waiting for the
    # kernel thread that the jobs of this process share.
    budget = kind.time_limit_seconds
    floor = calculation.progress  # a re-run never reports less than was reported before
    last_publish = last_write = 0.0
    key = calculation.id
    try:
        while not job.done:
            if budget <= 0:
                return await fail(
                    f"Time limit of {kind.time_limit_seconds:.0f} s exceeded "
                    f"at {max(floor, job.progress):.0%}."
                )
            if config.stopping.is_set():
                await _hand_back(services, config, calculation.id)
                logger.info("calculation %s handed back: this worker is stopping", key)
                return RunOutcome.RELEASED
            budget -= await loop.run_in_executor(executor, _timed_step, job)
            progress = max(floor, job.progress)
            clock = time.monotonic()
            if job.done:
                break
            partial = _kernel_call(job.partial_result)
            if clock - last_publish >= config.publish_interval and progress > floor:
                version += 1
                floor = progress
                last_publish = clock
                await _publish(
                    services,
                    CalculationEvent.progress_tick(
                        key,
                        attempt=calculation.attempts,
                        version=version,
                        progress=progress,
                        partial_result=partial,
                        owner_id=calculation.owner_id,
                    ),
                )
            if clock - last_write >= config.write_interval:
                last_write = clock
                async with single_statement(services.session_factory) as session:
                    owned = await CalculationRepository(session).record_progress(
                        calculation.id,
                        config.worker_id,
                        progress=floor,
                        partial_result=partial,
                        version=version,
                        now=_now(),
                    )
                if not owned:
                    logger.info("calculation %s was cancelled; stopping", key)
                    return RunOutcome.CANCELLED
        result = _kernel_call(job.result)
    except KernelError as error:
        logger.warning("kernel of %s failed: %s", key, error)
        return await fail(f"The {calculation.kind} kernel failed: {error}")
    except Exception as error:
        if is_transient(error):
            raise TransientError(type(error).__name__) from error
        if config.stopping.is_set() or _process_is_ending(error):
            # The process is going away under the run: not the calculation's fault.
            await _hand_back(services, config, calculation.id)
            logger.warning("calculation %s handed back: the process is ending", key)
            return RunOutcome.RELEASED
        # Not the kernel and not passing trouble: the detail is ours, not the user's.
        logger.exception("running %s failed", key)
        return await fail(INTERNAL_FAILURE)
    return await _finish(
        services, config, calculation, CalculationStatus.SUCCEEDED, version + 1, owner,
        result=result,
    )  # fmt: skip


async def _dispatch_shards(
    services: Infrastructure,
    config: RunnerConfig,
    calculation: Calculation,
    shards: int,
    take_over: bool,
) -> RunOutcome:
    """Split the claimed calculation into ``shards`` (the first time) and send every shard
    that no live worker holds. A takeover of a split calculation (all its workers went
    quiet) comes here again and re-sends only the shards not yet done; an immediate
    takeover (``take_over``: the embedded mode after a restart) also re-sends the shards
    that were running, whatever their last heartbeat."""
    send = config.send_shard
    assert send is not None
    async with unit_of_work(services.session_factory) as session:
        repo = ShardRepository(session)
        if calculation.shards == 1:
            split = await repo.split(calculation.id, config.worker_id, shards)
            if split is None:
                return RunOutcome.CANCELLED  # cancelled (or taken over) meanwhile
            calculation = split
        elif take_over:
            await repo.release_running(calculation.id)
        waiting = await repo.waiting(calculation.id, _now() - config.stale_after)
    logger.info("calculation %s runs as %d shards; sending %s", calculation.id, shards, waiting)
    await _announce(services, calculation)
    work = Work(calculation.kind, calculation.input, shards)
    for shard in waiting:
        await send(calculation.id, shard, work)  # each shard routed on its own share
    return RunOutcome.SPLIT


async def _hand_back(
    services: Infrastructure,
    config: RunnerConfig,
    calculation_id: uuid.UUID,
    *,
    claimed: bool = True,
) -> None:
    """QUEUED again (when this worker had claimed it) and re-sent, for another worker
    (a failed send is re-sent by the sweeper)."""
    if claimed:
        await release(services, config, calculation_id)
    if config.requeue is not None:
        with contextlib.suppress(Exception):
            await config.requeue(calculation_id)


def _process_is_ending(error: BaseException) -> bool:
    # concurrent.futures refuses work once its executor (or the interpreter) shuts down.
    return isinstance(error, RuntimeError) and "after shutdown" in str(error)


def is_transient(error: BaseException) -> bool:
    """Infrastructure trouble worth a retry (never an error in the input or a kernel)."""
    if isinstance(error, TransientError):
        return True
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import DBAPIError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    transient = (
        OperationalError,
        RedisConnectionError,
        RedisTimeoutError,
        PoolTimeoutError,
        OSError,
        TimeoutError,
    )
    if isinstance(error, transient):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


async def release(
    services: Infrastructure, config: RunnerConfig, calculation_id: uuid.UUID
) -> None:
    """Hand a run back (RUNNING → QUEUED) after a transient failure, so a retry can claim
    it at once. Best effort: if it fails, the stale-run sweeper recovers it."""
    try:
        async with unit_of_work(services.session_factory) as session:
            await CalculationRepository(session).release(calculation_id, config.worker_id)
    except Exception as error:
        logger.warning("could not release %s: %s", calculation_id, error)


async def _give_up(services: Infrastructure, calculation_id: uuid.UUID, reason: str) -> RunStats:
    """FAILED straight away, with the reason, and announced. Best effort: when even this
    cannot be stored, the row stays active and the sweeper (or the next start of the
    embedded mode) sends it again."""
    try:
        async with unit_of_work(services.session_factory) as session:
            row = await CalculationRepository(session).fail_unclaimed(
                calculation_id, error=reason, now=_now()
            )
    except Exception as error:
        logger.warning("could not mark %s FAILED: %s", calculation_id, error)
        return RunStats(RunOutcome.FAILED)
    if row is None:
        return RunStats()  # finished or cancelled meanwhile
    await _announce(services, row)
    return RunStats(RunOutcome.FAILED, row.kind)
