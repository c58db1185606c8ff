"""The module ``crunchql worker`` hands to Dramatiq: broker, middleware and the actors."""

from __future__ import annotations

import dramatiq

from crunchql.core.logging import configure_logging
from crunchql.core.settings import get_settings
from crunchql.observability.errors import init_error_reporting
from crunchql.workers.broker import GPU_QUEUE_NAME, QUEUE_NAME, create_broker
from crunchql.workers.lifecycle import WorkerLifecycle, current_runtime
from crunchql.workers.queues import (
    ACTOR_NAME,
    SHARD_ACTOR_NAME,
    run_message,
    run_shard_message,
)

settings = get_settings()
configure_logging(settings)
init_error_reporting(settings, component="worker")
if not settings.redis_url:
    raise SystemExit("crunchql worker needs REDIS_URL (without it, `crunchql serve` runs jobs).")

broker = create_broker(settings.redis_url, extra_middleware=[WorkerLifecycle(settings)])
dramatiq.set_broker(broker)
# Which queue this process consumes is `dramatiq --queues` (cli: --device); an actor runs
# whatever message names it, from either queue.
QUEUE = GPU_QUEUE_NAME if settings.worker_device == "gpu" else QUEUE_NAME


@dramatiq.actor(actor_name=ACTOR_NAME, queue_name=QUEUE, broker=broker)
async def run(calculation_id: str) -> None:
    runtime = current_runtime()
    await run_message(runtime.services, runtime.config, runtime.executor, calculation_id)


@dramatiq.actor(actor_name=SHARD_ACTOR_NAME, queue_name=QUEUE, broker=broker)
async def run_shard(calculation_id: str, shard: int) -> None:
    runtime = current_runtime()
    await run_shard_message(
        runtime.services, runtime.config, runtime.executor, calculation_id, shard
    )
