"""The module ``crunchql worker`` hands to Dramatiq: broker, middleware and the actor."""

from __future__ import annotations

import uuid

import dramatiq
from dramatiq.middleware import CurrentMessage

from crunchql.core.logging import configure_logging
from crunchql.core.settings import get_settings
from crunchql.observability.errors import init_error_reporting
from crunchql.observability.metrics import record_finished
from crunchql.workers.broker import QUEUE_NAME, create_broker
from crunchql.workers.lifecycle import WorkerLifecycle, current_runtime
from crunchql.workers.queues import ACTOR_NAME
from crunchql.workers.runner import (
    TransientError,
    fail_exhausted,
    is_transient,
    release,
    run_calculation,
)

settings = get_settings()
configure_logging(settings)
init_error_reporting(settings, component="worker")
if not settings.redis_url:
    raise SystemExit("crunchql worker needs REDIS_URL (without it, `crunchql serve` runs jobs).")

broker = create_broker(
    settings.redis_url,
    max_retries=settings.job_max_retries,
    extra_middleware=[WorkerLifecycle(settings)],
)
dramatiq.set_broker(broker)


@dramatiq.actor(
    actor_name=ACTOR_NAME,
    queue_name=QUEUE_NAME,
    broker=broker,
    max_retries=settings.job_max_retries,
    retry_when=lambda retries, error: (
        isinstance(error, TransientError) and retries <= settings.job_max_retries
    ),
)
async def run(calculation_id: str) -> None:
    runtime = current_runtime()
    try:
        parsed = uuid.UUID(calculation_id)
    except ValueError:
        return  # not ours to run; a retry would not help
    try:
        stats = await run_calculation(runtime.services, runtime.config, parsed, runtime.executor)
        if stats.kind:
            record_finished(stats.kind, stats.outcome, stats.seconds)
    except Exception as error:
        if not isinstance(error, TransientError) and not is_transient(error):
            raise
        message = CurrentMessage.get_current_message()
        retries = message.options.get("retries", 0) if message else 0
        if retries >= settings.job_max_retries:
            await fail_exhausted(
                runtime.services, parsed, "Gave up after repeated infrastructure errors."
            )
            return
        await release(runtime.services, runtime.config, parsed)
        raise TransientError(str(error)) from error
