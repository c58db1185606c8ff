"""Builds a process's long-lived parts from settings (engine, Redis, event bus, job
queue, services), and tears them down. Used by the API (app/) and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from crunchql.auth.concurrency import SlotLimiter
from crunchql.auth.passwords import PasswordHasher
from crunchql.auth.rate_limit import (
    DisabledRateLimiter,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
)
from crunchql.auth.tokens import TokenService
from crunchql.core.lifecycle import RetryPolicy
from crunchql.core.settings import Settings
from crunchql.db.engine import create_engine, create_session_factory, unit_of_work
from crunchql.db.migrate import upgrade_async
from crunchql.db.repositories import CalculationRepository
from crunchql.pubsub.bus import EventBus, InProcessEventBus, RedisEventBus
from crunchql.pubsub.redis_client import create_redis
from crunchql.services.audit import purge_expired_records
from crunchql.services.container import (
    JobQueue,
    Limits,
    RunnerServices,
    ServiceContainer,
    new_user_cache,
)
from crunchql.services.revocation import SessionGuard
from crunchql.workers.broker import create_broker
from crunchql.workers.queues import DramatiqJobQueue, EmbeddedJobQueue
from crunchql.workers.routing import router_from
from crunchql.workers.runner import RunnerConfig
from crunchql.workers.scheduler import Scheduler, build_scheduler

logger = logging.getLogger("crunchql.app")


RETENTION_SWEEP_SECONDS = 3600.0


async def _retention_loop(services: ServiceContainer, retention: timedelta) -> None:
    """Embedded mode has no worker sweep: the API process applies retention itself."""
    while True:
        try:
            await purge_expired_records(services.session_factory, audit_retention=retention)
        except Exception as error:
            logger.warning("retention sweep failed: %s", error)
        await asyncio.sleep(RETENTION_SWEEP_SECONDS)


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    services: ServiceContainer
    redis: Redis | None
    embedded_queue: EmbeddedJobQueue | None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    scheduler: Scheduler | None = None

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.services.session_guard.close()
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.embedded_queue is not None:
            await self.embedded_queue.close()
        await self.services.bus.close()
        await self.services.slots.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()


def limits_from(settings: Settings) -> Limits:
    return Limits(
        rate_limits=settings.rate_limits,
        login_attempts_per_account=settings.login_attempts_per_account,
        login_failures_per_address=settings.login_failures_per_address,
        login_failures_per_account=settings.login_failures_per_account,
        login_attempts_per_address=settings.login_attempts_per_address,
        register_attempts_per_address=settings.register_attempts_per_address,
        rate_limit_window_seconds=settings.rate_limit_window_seconds,
        max_active_calculations=settings.max_active_calculations,
        max_running_per_user=settings.max_running_per_user,
        ws_max_sockets_per_user=settings.ws_max_sockets_per_user,
        ws_max_subscriptions_per_user=settings.ws_max_subscriptions_per_user,
        ws_operations_per_minute=settings.ws_operations_per_minute,
        subscription_max_seconds=settings.subscription_max_seconds,
        max_active_schedules=settings.max_active_schedules,
        cron_seconds_field=settings.scheduler_seconds_field,
    )


async def start_runtime(
    settings: Settings, *, migrate: bool | None = None, run_jobs: bool = True
) -> Runtime:
    """Connect everything. With no REDIS_URL, jobs run in this process (embedded mode).

    ``run_jobs=False`` is for one-off commands (``crunchql users create-admin``) next to
    a running server: they must not take over the server's calculations.
    """
    if settings.generated_secret:
        logger.warning(
            "CRUNCHQL_JWT_SECRET is not set: using a random per-process secret "
            "(tokens end with the process; set it for anything but a first try)"
        )
    if migrate if migrate is not None else not settings.is_production:
        await upgrade_async(settings.database_url)
    engine = create_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_overflow,
        ping_after_idle=settings.database_ping_after_idle_seconds,
    )
    session_factory = create_session_factory(engine)
    redis: Redis | None = None
    bus: EventBus
    rate_limiter: RateLimiter
    if settings.redis_url:
        redis = create_redis(settings.redis_url)
        bus = RedisEventBus(redis)
        rate_limiter = RedisRateLimiter(redis)
    else:
        bus = InProcessEventBus()
        rate_limiter = MemoryRateLimiter()
    if not settings.rate_limits:
        rate_limiter = DisabledRateLimiter()
    config = RunnerConfig(
        worker_id=f"embedded:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
        publish_interval=settings.progress_publish_interval,
        write_interval=settings.progress_write_interval,
        stale_after=timedelta(seconds=settings.worker_stale_seconds),
        max_running_per_user=settings.max_running_per_user or None,  # 0: no limit
        retry=RetryPolicy(max_retries=settings.job_max_retries),
        quick_run_seconds=settings.quick_run_seconds,
    )
    embedded: EmbeddedJobQueue | None = None
    queue: JobQueue
    if settings.redis_url:
        queue = DramatiqJobQueue(
            create_broker(settings.redis_url), router_from(settings, session_factory), redis
        )
    else:
        embedded = EmbeddedJobQueue(
            RunnerServices(session_factory=session_factory, bus=bus),
            config,
        )
        # No shards in the embedded mode: one process with one kernel thread gains
        # nothing from splitting, and a split run shows no running estimate. (The
        # embedded queue can run shards: EmbeddedJobQueue.enqueue_shard.)
        queue = embedded
    services = ServiceContainer(
        session_factory=session_factory,
        hasher=PasswordHasher(settings.bcrypt_rounds),
        tokens=TokenService(
            secret=settings.jwt_secret,
            algorithm=settings.jwt_algorithm,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            access_lifetime=timedelta(minutes=settings.access_token_minutes),
            refresh_lifetime=timedelta(days=settings.refresh_token_days),
        ),
        rate_limiter=rate_limiter,
        bus=bus,
        queue=queue,
        limits=limits_from(settings),
        user_cache=new_user_cache(settings.user_cache_seconds),
        session_guard=SessionGuard(
            recheck_seconds=settings.session_recheck_seconds,
            # As long as an access token of a revoked session could still be presented.
            remember_seconds=settings.access_token_minutes * 60.0 + 60.0,
        ),
        slots=SlotLimiter(redis),
    )
    await bus.start()
    users = services.user_cache
    await services.session_guard.start(
        bus, session_factory, forget_user=lambda user_id: users.pop(user_id, None)
    )
    tasks: list[asyncio.Task[None]] = []
    if embedded is not None and run_jobs:
        if settings.warm_up_kernels:
            embedded.warm_up()
        async with unit_of_work(session_factory) as session:
            pending = await CalculationRepository(session).list_active_ids()
        if pending:
            logger.info("resuming %d calculations left from the last run", len(pending))
        await embedded.recover(pending)
        retention = timedelta(days=settings.audit_retention_days)
        tasks.append(asyncio.create_task(_retention_loop(services, retention)))
    scheduler = None
    if embedded is not None and run_jobs and settings.run_scheduler:
        # Embedded mode: schedules fire in this process (with Redis, workers and
        # `crunchql scheduler` processes fire them).
        scheduler = build_scheduler(
            settings, session_factory, embedded, services.limits, publish=services.bus.publish
        )
        scheduler.start()
    return Runtime(
        settings=settings,
        engine=engine,
        services=services,
        redis=redis,
        embedded_queue=embedded,
        tasks=tasks,
        scheduler=scheduler,
    )
