"""The module ``crunchql worker`` hands to Dramatiq: broker, middleware and the actor."""

from __future__ import annotations

import dramatiq

from crunchql.core.logging import configure_logging
from crunchql.core.settings import get_settings
from crunchql.observability.errors import init_error_reporting
from crunchql.workers.broker import QUEUE_NAME, create_broker
from crunchql.workers.lifecycle import WorkerLifecycle, current_runtime
from crunchql.workers.queues import ACTOR_NAME, run_message

settings = get_settings()
configure_logging(settings)
init_error_reporting(settings, component="worker")
if not settings.redis_url:
    raise SystemExit("crunchql worker needs REDIS_URL (without it, `crunchql serve` runs jobs).")

broker = create_broker(settings.redis_url, extra_middleware=[WorkerLifecycle(settings)])
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name=ACTOR_NAME, queue_name=QUEUE_NAME, broker=broker)
async def run(calculation_id: str) -> None:
    runtime = current_runtime()
    await run_message(runtime.services, runtime.config, runtime.executor, calculation_id)
