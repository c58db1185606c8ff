"""Runs one calculation: claim → kernel chunk by chunk → save → publish.

The same coroutine serves the Dramatiq actor (worker processes) and the embedded
in-process queue. The database row is the source of truth: a duplicate message finds
nothing to claim, a cancel is seen at the next progress write, and a run whose
worker died is claimed again once its heartbeat is stale.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from compute.base import ParameterError
from compute.catalog import KINDS
from core.logging import bind_log_context
from db.engine import unit_of_work
from db.models import Calculation, CalculationStatus
from db.repositories import CalculationRepository
from pubsub.bus import EventBus
from services.calculations import publish_status
from services.container import Infrastructure

logger = logging.getLogger("crunchql.runner")


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


@dataclass
class RunStats:
    outcome: str = "skipped"
    kind: str | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _now() -> datetime:
    return datetime.now(UTC)


async def _announce(services: Infrastructure, calculation: Calculation) -> None:
    try:
        await publish_status(services, calculation)
    except Exception as error:  # the row is saved; subscribers re-read it when idle
        logger.warning("could not publish a status change: %s", error)


async def _publish(bus: EventBus, event: dict[str, Any]) -> None:
    try:
        await bus.publish(event["id"], event)
    except Exception as error:  # a lost event is recovered by subscribers' re-reads
        logger.warning("could not publish an event: %s", error)


async def run_calculation(
    services: Infrastructure,
    config: RunnerConfig,
    calculation_id: uuid.UUID,
    executor: Executor | None = None,
    *,
    take_over: bool = False,
) -> RunStats:
    stats = RunStats()
    if config.stopping.is_set():
        # Shutting down: leave the calculation for another worker, untouched.
        if config.requeue is not None:
            await config.requeue(calculation_id)
        return stats
    factory = services.session_factory
    now = _now()
    stale_before = now if take_over else now - config.stale_after
    async with unit_of_work(factory) as session:
        calculation = await CalculationRepository(session).claim(
            calculation_id, config.worker_id, now, stale_before
        )
    if calculation is None:
        return stats  # finished, cancelled, or alive on another worker
    stats.kind = calculation.kind
    bind_log_context(calculation_id=str(calculation_id), kind=calculation.kind)
    await _announce(services, calculation)
    started = time.monotonic()
    try:
        stats.outcome = await _execute(services, config, calculation, executor)
    finally:
        stats.seconds = time.monotonic() - started
    return stats


async def _finish(
    services: Infrastructure,
    config: RunnerConfig,
    calculation: Calculation,
    status: CalculationStatus,
    version: int,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> str:
    async with unit_of_work(services.session_factory) as session:
        row = await CalculationRepository(session).finish(
            calculation.id,
            config.worker_id,
            status=status,
            now=_now(),
            version=version,
            result=result,
            error=error,
        )
    if row is None:
        return "cancelled"  # cancelled (or taken over) while we ran: nothing to store
    await _announce(services, row)
    return status.value.lower()


async def _execute(
    services: Infrastructure,
    config: RunnerConfig,
    calculation: Calculation,
    executor: Executor | None,
) -> str:
    loop = asyncio.get_running_loop()
    kind = KINDS.get(calculation.kind)
    version = calculation.version
    if kind is None:
        return await _finish(
            services,
            config,
            calculation,
            CalculationStatus.FAILED,
            version + 1,
            error=f"Unknown calculation kind {calculation.kind!r}.",
        )
    try:
        job = kind.start(kind.validate(calculation.input))
    except ParameterError as error:
        return await _finish(
            services,
            config,
            calculation,
            CalculationStatus.FAILED,
            version + 1,
            error=f"Invalid input: {error.message}",
        )
    deadline = time.monotonic() + kind.time_limit_seconds
    floor = calculation.progress  # a re-run never reports less than was reported before
    last_publish = last_write = 0.0
    key = str(calculation.id)
    try:
        while not job.done:
            if time.monotonic() > deadline:
                return await _finish(
                    services,
                    config,
                    calculation,
                    CalculationStatus.FAILED,
                    version + 1,
                    error=f"Time limit of {kind.time_limit_seconds:.0f} s exceeded "
                    f"at {max(floor, job.progress):.0%}.",
                )
            if config.stopping.is_set():
                await release(services, config, calculation.id)
                if config.requeue is not None:
                    await config.requeue(calculation.id)
                logger.info("calculation %s handed back: this worker is stopping", key)
                return "released"
            await loop.run_in_executor(executor, job.step)
            progress = max(floor, job.progress)
            clock = time.monotonic()
            if job.done:
                break
            partial = job.partial_result()
            if clock - last_publish >= config.publish_interval and progress > floor:
                version += 1
                floor = progress
                last_publish = clock
                await _publish(
                    services.bus,
                    {
                        "id": key,
                        "status": CalculationStatus.RUNNING.value,
                        "progress": progress,
                        "partialResult": partial,
                        "version": version,
                    },
                )
            if clock - last_write >= config.write_interval:
                last_write = clock
                async with unit_of_work(services.session_factory) as session:
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
                    return "cancelled"
        result = job.result()
    except (ParameterError, ValueError, ArithmeticError) as error:
        return await _finish(
            services,
            config,
            calculation,
            CalculationStatus.FAILED,
            version + 1,
            error=f"{type(error).__name__}: {error}",
        )
    except TransientError:
        raise
    except Exception as error:
        if is_transient(error):
            raise TransientError(str(error)) from error
        logger.exception("kernel of %s failed", key)
        return await _finish(
            services,
            config,
            calculation,
            CalculationStatus.FAILED,
            version + 1,
            error=f"The {calculation.kind} kernel failed: {type(error).__name__}: {error}",
        )
    return await _finish(
        services, config, calculation, CalculationStatus.SUCCEEDED, version + 1, result=result
    )


def is_transient(error: BaseException) -> bool:
    """Infrastructure trouble worth a retry (never an error in the input or a kernel)."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(error, OperationalError | RedisConnectionError | OSError):
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


async def fail_exhausted(services: Infrastructure, calculation_id: uuid.UUID, reason: str) -> None:
    """Retries are used up: FAILED, with the reason, and announced."""
    async with unit_of_work(services.session_factory) as session:
        row = await CalculationRepository(session).fail_unclaimed(
            calculation_id, error=reason, now=_now()
        )
    if row is not None:
        await _announce(services, row)
