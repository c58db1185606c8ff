"""What a worker process does besides running jobs: warm the kernels before taking
work, say it is alive, and re-send calculations whose worker died."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import Middleware
from redis.asyncio import Redis

from crunchql.compute.catalog import warm_up_all
from crunchql.core.lifecycle import RetryPolicy
from crunchql.core.settings import Settings
from crunchql.db.engine import create_engine, create_session_factory, unit_of_work
from crunchql.db.repositories import CalculationRepository, ShardRepository, WorkerRepository
from crunchql.observability.metrics import start_worker_metrics_server
from crunchql.pubsub.bus import RedisEventBus
from crunchql.pubsub.redis_client import create_redis
from crunchql.services.audit import apply_retention
from crunchql.services.container import RunnerServices
from crunchql.services.schedule_fire import Announce
from crunchql.workers.broker import QUEUE_NAME, CrunchRedisBroker
from crunchql.workers.queues import DramatiqJobQueue
from crunchql.workers.runner import RunnerConfig
from crunchql.workers.scheduler import Scheduler, build_scheduler

logger = logging.getLogger("crunchql.worker")
SWEEP_INTERVAL_SECONDS = 5.0
QUEUED_RESEND_AFTER = timedelta(seconds=60)
# Under load the broker queue is never empty, so a lost message cannot be told from a
# waiting one: QUEUED rows this old are re-sent anyway, at most once per period by each
# worker process (a duplicate finds nothing to claim).
QUEUED_RESEND_ALWAYS_AFTER = timedelta(minutes=10)


@dataclass
class WorkerRuntime:
    """Per-process state, created on the worker's event loop thread."""

    settings: Settings
    broker: CrunchRedisBroker
    services: RunnerServices
    config: RunnerConfig
    executor: ThreadPoolExecutor
    redis: Redis
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    resent: dict[uuid.UUID, float] = field(default_factory=dict)
    scheduler: Scheduler | None = None

    @classmethod
    async def create(cls, settings: Settings, broker: CrunchRedisBroker) -> WorkerRuntime:
        engine = create_engine(
            settings.database_url,
            pool_size=settings.database_pool_size,
            synchronous_commit=False,  # all a worker writes is recomputed if lost
        )
        redis = create_redis(settings.redis_url or "")
        worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        runtime = cls(
            settings=settings,
            broker=broker,
            services=RunnerServices(
                session_factory=create_session_factory(engine), bus=RedisEventBus(redis)
            ),
            config=RunnerConfig(
                worker_id=worker_id,
                requeue=DramatiqJobQueue(broker, redis).enqueue,
                shard_seconds=settings.shard_seconds,
                send_shard=DramatiqJobQueue(broker).enqueue_shard,
                publish_interval=settings.progress_publish_interval,
                write_interval=settings.progress_write_interval,
                stale_after=timedelta(seconds=settings.worker_stale_seconds),
                max_running_per_user=settings.max_running_per_user,
                retry=RetryPolicy(max_retries=settings.job_max_retries),
            ),
            # One kernel thread per process: kernels are parallel inside, and numba's
            # default threading layer must not run two parallel regions at once.
            executor=ThreadPoolExecutor(max_workers=1, thread_name_prefix="crunchql-kernel"),
            redis=redis,
        )
        runtime.tasks = [
            asyncio.create_task(runtime._heartbeat_loop()),
            asyncio.create_task(runtime._sweep_loop()),
        ]
        if settings.run_scheduler:
            runtime.scheduler = start_scheduler(settings, broker, runtime.services.bus.publish)
        return runtime

    async def _heartbeat_loop(self) -> None:
        hostname, pid = socket.gethostname(), os.getpid()
        while True:
            try:
                async with unit_of_work(self.services.session_factory) as session:
                    await WorkerRepository(session).beat(
                        self.config.worker_id, hostname, pid, datetime.now(UTC)
                    )
            except Exception as error:
                logger.warning("worker heartbeat failed: %s", error)
            await asyncio.sleep(self.settings.worker_heartbeat_seconds)

    async def sweep_once(self) -> int:
        """Re-send what no message will run: runs whose worker died, and calculations
        still QUEUED a minute after submission while the broker queue is empty (their
        message was lost: Redis restarted, or the enqueue after commit failed).
        Duplicates are harmless: a claim is conditional."""
        now = datetime.now(UTC)
        async with unit_of_work(self.services.session_factory) as session:
            repo = CalculationRepository(session)
            resend = await repo.release_stale_runs(stale_before=now - self.config.stale_after)
            # A shard whose worker died: only it is re-run, the others keep their partials.
            shards = await ShardRepository(session).release_stale(
                stale_before=now - self.config.stale_after
            )
            if await asyncio.to_thread(self.broker.do_qsize, QUEUE_NAME) == 0:
                resend += await repo.list_waiting(
                    created_before=now - QUEUED_RESEND_AFTER,
                    # Waiting for a free per-user slot is not a lost message.
                    max_running=self.config.max_running_per_user,
                    alive_after=now - self.config.stale_after,
                )
            else:
                clock = time.monotonic()
                period = QUEUED_RESEND_ALWAYS_AFTER.total_seconds()
                self.resent = {k: t for k, t in self.resent.items() if clock - t < period}
                old = await repo.list_waiting(
                    created_before=now - QUEUED_RESEND_ALWAYS_AFTER,
                    max_running=self.config.max_running_per_user,
                    alive_after=now - self.config.stale_after,
                )
                resend += [each for each in old if each not in self.resent]
                self.resent.update(dict.fromkeys(resend, clock))
            await WorkerRepository(session).prune(now, timedelta(hours=1))
            await apply_retention(
                session, now, audit_retention=timedelta(days=self.settings.audit_retention_days)
            )
        queue = DramatiqJobQueue(self.broker)
        for calculation_id in resend:
            logger.warning(
                "re-sending calculation %s (worker gone or message lost)", calculation_id
            )
            await queue.enqueue(calculation_id)
        for calculation_id, shard in shards:
            logger.warning(
                "re-sending calculation %s shard %d (worker gone)", calculation_id, shard
            )
            await queue.enqueue_shard(calculation_id, shard)
        return len(resend) + len(shards)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_SECONDS)
            try:
                await self.sweep_once()
            except Exception as error:
                logger.warning("stale-run sweep failed: %s", error)

    async def close(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()
            await self.scheduler.session_factory.kw["bind"].dispose()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            async with unit_of_work(self.services.session_factory) as session:
                await WorkerRepository(session).remove(self.config.worker_id)
        self.executor.shutdown(wait=False)
        await self.services.session_factory.kw["bind"].dispose()
        await self.redis.aclose()


def start_scheduler(
    settings: Settings, broker: CrunchRedisBroker, publish: Announce | None = None
) -> Scheduler:
    """A scheduler contending for leadership (CRUNCHQL_RUN_SCHEDULER=false or
    `crunchql worker --no-scheduler` turns it off). Its own small engine, with
    synchronous commits: a fire it records must survive a database crash."""
    from crunchql.runtime import limits_from

    engine = create_engine(settings.database_url, pool_size=settings.scheduler_lanes)
    scheduler = build_scheduler(
        settings,
        create_session_factory(engine),
        DramatiqJobQueue(broker),
        limits_from(settings),
        publish=publish,
    )
    scheduler.start()
    return scheduler


_runtime: WorkerRuntime | None = None

# A stop signal within this long of the first is the same stop, not a second one.
ECHOED_SIGNAL_SECONDS = 2.0


def _ignore_echoed_stop_signals() -> None:
    """Keep one stop request from counting twice in a Dramatiq worker process.

    Dramatiq reads a second SIGTERM as "die now" (``sys.exit``, running jobs abandoned).
    But a stop signalled to the whole process group (systemd's default, Ctrl-C in a
    terminal, ``kill -- -PGID``) reaches each worker process twice at once: straight,
    and passed on by Dramatiq's main process. So a worker stopped that way used to die
    instead of handing its jobs back. A repeat within ECHOED_SIGNAL_SECONDS is now taken
    for that echo; a later one still means "die now". Runs in the worker process's main
    thread (after_process_boot), after Dramatiq installed its handlers.
    """
    first: dict[int, float] = {}

    def install(signum: int) -> None:
        previous = signal.getsignal(signum)
        if not callable(previous):
            return

        def handler(received: int, frame: Any) -> None:
            now = time.monotonic()
            started = first.setdefault(received, now)
            if started != now and now - started < ECHOED_SIGNAL_SECONDS:
                logger.info(
                    "stop signal %d again within %.0f s: the same stop",
                    received,
                    ECHOED_SIGNAL_SECONDS,
                )
                return
            previous(received, frame)

        signal.signal(signum, handler)

    install(signal.SIGTERM)
    if hasattr(signal, "SIGHUP"):
        install(signal.SIGHUP)


def current_runtime() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("worker runtime not started (is the WorkerLifecycle middleware on?)")
    return _runtime


class WorkerLifecycle(Middleware):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def after_process_boot(self, broker: Any) -> None:
        _ignore_echoed_stop_signals()
        if self.settings.metrics:
            start_worker_metrics_server(self.settings.worker_metrics_port)
        started = time.perf_counter()
        warm_up_all()
        logger.info("kernels ready in %.2f s", time.perf_counter() - started)

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        # Dramatiq starts consuming between its before_ and after_worker_boot hooks, so a
        # message already waiting could reach the actor before an after-boot runtime
        # existed (it failed, and waited a minute for the sweep). AsyncIO, which comes
        # earlier in the middleware list, has started the event loop thread by now.
        global _runtime
        loop_thread = get_event_loop_thread()
        assert loop_thread is not None, "the AsyncIO middleware must come first"
        _runtime = loop_thread.run_coroutine(WorkerRuntime.create(self.settings, broker))

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        loop_thread = get_event_loop_thread()
        if _runtime is not None and loop_thread is not None:
            # Running jobs hand their calculation back at the next chunk boundary
            # instead of holding shutdown up (or being killed mid-run).
            loop_thread.loop.call_soon_threadsafe(_runtime.config.stopping.set)

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        # Only now, when no job can still be handing back, close what they share.
        global _runtime
        loop_thread = get_event_loop_thread()
        if _runtime is not None and loop_thread is not None:
            with contextlib.suppress(Exception):
                loop_thread.run_coroutine(_runtime.close())
        _runtime = None
