"""Runs one shard of a split calculation: claim the shard → its kernel chunk by chunk →
store its partial result; the shard that stores the last partial combines them all and
finishes the calculation, in the same transaction.

The database rows are the source of truth, as for whole runs (:mod:`workers.runner`): a
duplicate message finds nothing to claim, a cancel is seen at the shard's next progress
write, and a shard whose worker died is claimed again once its heartbeat is stale (the
workers' sweeper re-sends it); the other shards keep what they stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass

from crunchql.compute.base import Job
from crunchql.compute.catalog import KINDS
from crunchql.compute.devices import has_gpu_kernel
from crunchql.core.lifecycle import CalculationEvent, RunOutcome
from crunchql.core.logging import bind_log_context
from crunchql.db.engine import unit_of_work
from crunchql.db.models import Calculation, CalculationStatus
from crunchql.db.repositories import CalculationRepository, ShardProgress, ShardRepository
from crunchql.observability.metrics import record_finished
from crunchql.services.container import Infrastructure
from crunchql.workers.runner import (
    GAVE_UP,
    INTERNAL_FAILURE,
    KernelError,
    RunnerConfig,
    TransientError,
    _announce,
    _kernel_call,
    _now,
    _process_is_ending,
    _publish,
    _start_waiting,
    _timed_step,
    is_transient,
)

logger = logging.getLogger("crunchql.shards")


@dataclass(frozen=True)
class ShardStats:
    outcome: RunOutcome = RunOutcome.SKIPPED
    kind: str | None = None
    seconds: float = 0.0


async def run_shard_with_policy(
    services: Infrastructure,
    config: RunnerConfig,
    calculation_id: uuid.UUID,
    shard: int,
    executor: Executor | None = None,
    *,
    retries: int = 0,
    take_over: bool = False,
) -> ShardStats:
    """One delivery of a shard, with the same policy as a whole run
    (:func:`workers.runner.run_with_policy`): shutting down hands the shard back,
    infrastructure trouble retries it (RETRY) or, with no retries left, fails the
    calculation; anything else escaping is a bug that fails the calculation at once."""
    if config.stopping.is_set():
        await _resend(config, calculation_id, shard)
        return ShardStats()
    try:
        stats = await run_shard(
            services, config, calculation_id, shard, executor, take_over=take_over
        )
    except Exception as error:
        if not is_transient(error):
            logger.exception("calculation %s shard %d: the runner failed", calculation_id, shard)
            return await _fail(services, calculation_id, INTERNAL_FAILURE)
        await _release(services, config, calculation_id, shard)
        if config.stopping.is_set():
            await _resend(config, calculation_id, shard)
            return ShardStats(RunOutcome.RELEASED)
        if not config.retry.gives_up(retries):
            logger.warning("calculation %s shard %d: transient error (retry %d follows): %s",
                           calculation_id, shard, retries + 1, error)  # fmt: skip
            return ShardStats(RunOutcome.RETRY)
        return await _fail(services, calculation_id, GAVE_UP)
    if stats.kind and stats.outcome.is_run:
        record_finished(stats.kind, stats.outcome, stats.seconds)
    return stats


async def run_shard(
    services: Infrastructure,
    config: RunnerConfig,
    calculation_id: uuid.UUID,
    shard: int,
    executor: Executor | None = None,
    *,
    take_over: bool = False,
) -> ShardStats:
    """Claim the shard and run it once; infrastructure errors propagate."""
    now = _now()
    stale_before = now if take_over else now - config.stale_after
    async with unit_of_work(services.session_factory) as session:
        calculation = await ShardRepository(session).claim(
            calculation_id, shard, config.worker_id, now, stale_before, device=config.device
        )
    if calculation is None:
        return ShardStats()  # stored already, cancelled, or alive on another worker
    bind_log_context(calculation_id=str(calculation_id), kind=calculation.kind, shard=str(shard))
    started = time.monotonic()
    outcome = await _execute(services, config, calculation, shard, executor)
    if outcome in (RunOutcome.SUCCEEDED, RunOutcome.FAILED, RunOutcome.CANCELLED):
        # The calculation ended (or this shard saw it end): its owner's waiting runs
        # may start (the fair-share limit counts a split calculation as one run).
        await _start_waiting(services, config, calculation.owner_id)
    return ShardStats(outcome, calculation.kind, time.monotonic() - started)


async def _execute(
    services: Infrastructure,
    config: RunnerConfig,
    calculation: Calculation,
    shard: int,
    executor: Executor | None,
) -> RunOutcome:
    loop = asyncio.get_running_loop()
    key = calculation.id
    kind = KINDS.get(calculation.kind)
    if kind is None:
        return (
            await _fail(services, key, f"Unknown calculation kind {calculation.kind!r}.")
        ).outcome
    try:
        job: Job
        if config.gpu is not None and has_gpu_kernel(kind.name):
            job = config.gpu.start_shard(kind.name, calculation.input, shard, calculation.shards)
        else:  # not routed to a GPU worker by the service; its CPU kernel still runs it
            job = kind.start_shard(calculation.input, shard, calculation.shards)
    except Exception as error:
        logger.exception("starting %s shard %d failed", key, shard)
        message = f"The {calculation.kind} kernel failed: {type(error).__name__}: {error}"
        return (await _fail(services, key, message)).outcome
    # Each shard has the kind's whole time limit: a shard is a fraction of a job.
    budget = kind.time_limit_seconds
    last_write = last_publish = time.monotonic()
    # What the calculation looked like at this shard's last write; between writes, ticks
    # go out every publish interval with this shard's advance added (an estimate, never
    # stored: the database keeps the mean over shards, and subscribers drop a tick that
    # does not move progress forward).
    known = ShardProgress(
        calculation.attempts, calculation.version, calculation.progress, calculation.shards,
        calculation.shards_done,
    )  # fmt: skip
    written = 0.0
    try:
        while not job.done:
            if budget <= 0:
                message = (
                    f"Time limit of {kind.time_limit_seconds:.0f} s exceeded in shard {shard}."
                )
                return (await _fail(services, key, message)).outcome
            if config.stopping.is_set():
                await _release(services, config, key, shard)
                await _resend(config, key, shard)
                logger.info("calculation %s shard %d handed back: stopping", key, shard)
                return RunOutcome.RELEASED
            budget -= await loop.run_in_executor(executor, _timed_step, job)
            clock = time.monotonic()
            if job.done:
                break
            progress = job.progress
            if clock - last_write >= config.write_interval:
                last_write = clock
                async with unit_of_work(services.session_factory) as session:
                    state = await ShardRepository(session).record_progress(
                        key, shard, config.worker_id, progress=progress, now=_now()
                    )
                if state is None:
                    logger.info("calculation %s shard %d: no longer ours; stopping", key, shard)
                    return RunOutcome.CANCELLED
                known, written = state, progress
            elif clock - last_publish < config.publish_interval:
                continue
            last_publish = clock
            shown = min(1.0, known.progress + max(0.0, progress - written) / known.shards)
            # The running estimate (kinds that converge) is this shard's own: a valid
            # estimate, with its standard error, from the samples this shard has drawn.
            await _publish(
                services,
                CalculationEvent.progress_tick(
                    key, attempt=known.attempts, version=known.version, progress=shown,
                    partial_result=_kernel_call(job.partial_result), shards=known.shards,
                    shards_done=known.shards_done, owner_id=calculation.owner_id,
                ),
            )  # fmt: skip
        partial = job.result()
        estimate = _kernel_call(job.partial_result)
    except KernelError as error:
        logger.warning("kernel of %s shard %d failed: %s", key, shard, error)
        return (
            await _fail(services, key, f"The {calculation.kind} kernel failed: {error}")
        ).outcome
    except Exception as error:
        if is_transient(error):
            raise TransientError(type(error).__name__) from error
        if config.stopping.is_set() or _process_is_ending(error):
            await _release(services, config, key, shard)
            await _resend(config, key, shard)
            return RunOutcome.RELEASED
        logger.exception("running %s shard %d failed", key, shard)
        return (await _fail(services, key, INTERNAL_FAILURE)).outcome
    return await _store(services, config, calculation, shard, partial, estimate)


async def _store(
    services: Infrastructure,
    config: RunnerConfig,
    calculation: Calculation,
    shard: int,
    partial: dict[str, object],
    estimate: dict[str, object] | None,
) -> RunOutcome:
    """Store the partial; the shard that stores the last one combines them and finishes
    the calculation in the same transaction (the calculation's row stays locked from
    the count to the commit, so no other shard can also finish it)."""
    kind = KINDS[calculation.kind]
    async with unit_of_work(services.session_factory) as session:
        stored = await ShardRepository(session).finish(
            calculation.id, shard, config.worker_id, partial=partial, now=_now()
        )
        if stored is None:
            return RunOutcome.CANCELLED  # cancelled, or the shard was taken over
        row: Calculation | None = stored.calculation
        if stored.partials is not None:
            try:
                result = kind.combine(calculation.input, stored.partials)
            except Exception as error:
                logger.exception("combining the shards of %s failed", calculation.id)
                raise KernelError(f"{type(error).__name__}: {error}") from error
            row = await CalculationRepository(session).complete(
                calculation.id, result=result, now=_now()
            )
    if row is None:
        return RunOutcome.CANCELLED
    if row.status is CalculationStatus.SUCCEEDED:
        await _announce(services, row)
        return RunOutcome.SUCCEEDED
    await _publish(
        services,
        CalculationEvent.progress_tick(
            row.id, attempt=row.attempts, version=row.version, progress=row.progress,
            partial_result=estimate, shards=row.shards, shards_done=row.shards_done,
            owner_id=row.owner_id,
        ),
    )  # fmt: skip
    return RunOutcome.SPLIT


async def _release(
    services: Infrastructure, config: RunnerConfig, calculation_id: uuid.UUID, shard: int
) -> None:
    """Best effort: a shard not released is taken over once its heartbeat is stale."""
    try:
        async with unit_of_work(services.session_factory) as session:
            await ShardRepository(session).release(calculation_id, shard, config.worker_id)
    except Exception as error:
        logger.warning("could not release %s shard %d: %s", calculation_id, shard, error)


async def _resend(config: RunnerConfig, calculation_id: uuid.UUID, shard: int) -> None:
    if config.send_shard is not None:
        with contextlib.suppress(Exception):
            await config.send_shard(calculation_id, shard, None)


async def _fail(services: Infrastructure, calculation_id: uuid.UUID, reason: str) -> ShardStats:
    """The calculation FAILED (every other shard stops at its next progress write)."""
    try:
        async with unit_of_work(services.session_factory) as session:
            row = await CalculationRepository(session).fail_unclaimed(
                calculation_id, error=reason, now=_now()
            )
    except Exception as error:
        logger.warning("could not mark %s FAILED: %s", calculation_id, error)
        return ShardStats(RunOutcome.FAILED)
    if row is None:
        return ShardStats()
    await _announce(services, row)
    return ShardStats(RunOutcome.FAILED, row.kind)
