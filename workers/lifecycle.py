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
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

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
from crunchql.workers.broker import GPU_QUEUE_NAME, QUEUE_NAME, CrunchRedisBroker
from crunchql.workers.queues import SHARD_ACTOR_NAME, DramatiqJobQueue
from crunchql.workers.routing import GpuRouter, router_from
from crunchql.workers.runner import GpuJobs, RunnerConfig
from crunchql.workers.scheduler import Scheduler, build_scheduler, create_scheduler_engine

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
    queue: DramatiqJobQueue
    router: GpuRouter
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
            max_overflow=settings.database_pool_overflow,
            synchronous_commit=False,  # all a worker writes is recomputed if lost
            ping_after_idle=settings.database_ping_after_idle_seconds,
        )
        redis = create_redis(settings.redis_url or "")
        worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        session_factory = create_session_factory(engine)
        router = router_from(settings, session_factory)
        queue = DramatiqJobQueue(broker, router, redis)
        gpu = settings.worker_device == "gpu"
        runtime = cls(
            settings=settings,
            broker=broker,
            services=RunnerServices(session_factory=session_factory, bus=RedisEventBus(redis)),
            queue=queue,
            router=router,
            config=RunnerConfig(
                worker_id=worker_id,
                requeue=queue.enqueue,
                # A GPU worker runs a calculation whole: its kernels are ~100x one core,
                # so splitting it would only add overhead (it still runs shards it gets).
                shard_seconds=0.0 if gpu else settings.shard_seconds,
                send_shard=queue.enqueue_shard,
                device=settings.worker_device,
                gpu=_gpu_jobs() if gpu else None,
                publish_interval=settings.progress_publish_interval,
                write_interval=settings.progress_write_interval,
                stale_after=timedelta(seconds=settings.worker_stale_seconds),
                max_running_per_user=settings.max_running_per_user or None,  # 0: no limit
                retry=RetryPolicy(max_retries=settings.job_max_retries),
                quick_run_seconds=settings.quick_run_seconds,
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
                        self.config.worker_id, hostname, pid, datetime.now(UTC),
                        device=self.config.device,
                    )  # fmt: skip
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
            gpu_alive = await WorkerRepository(session).count_alive(
                now, self.config.stale_after, device="gpu"
            )
        queue = self.queue
        if gpu_alive:
            stranded = 0
        else:  # before the re-sends below, which then see no GPU worker either
            self.router.forget()
            stranded = await self.rescue_gpu_queue()
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
        return len(resend) + len(shards) + stranded

    async def rescue_gpu_queue(self) -> int:
        """No GPU worker is alive: move every message waiting in ``calculations.gpu``
        (its delay queue, and what a dead GPU worker had fetched, included) to where
        the router sends it now, the CPU queue. Taken, re-sent, then acknowledged: if
        this process dies in between, Dramatiq gives them back to the GPU queue and the
        next sweep (here or in another worker) moves them again. Duplicates are harmless
        (a claim is conditional)."""
        if await asyncio.to_thread(self.broker.do_qsize, GPU_QUEUE_NAME) == 0:
            return 0
        taken = await asyncio.to_thread(self.broker.take_all, GPU_QUEUE_NAME)
        for _, message in taken:
            try:
                calculation_id = uuid.UUID(str(message.args[0]))
            except (IndexError, ValueError):
                continue  # not ours to run
            if message.actor_name == SHARD_ACTOR_NAME and len(message.args) > 1:
                shard = int(message.args[1])
                logger.warning("GPU worker gone: calculation %s shard %d to the CPU queue",
                               calculation_id, shard)  # fmt: skip
                await self.queue.enqueue_shard(calculation_id, shard)
            else:
                logger.warning("GPU worker gone: calculation %s to the CPU queue", calculation_id)
                await self.queue.enqueue(calculation_id)
        await asyncio.to_thread(self.broker.ack_taken, taken)
        return len(taken)

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


def _gpu_jobs() -> GpuJobs:
    """The GPU jobs (imports numba.cuda: only in a GPU worker's process)."""
    from crunchql.compute.gpu import jobs

    return cast(GpuJobs, jobs)


def check_gpu() -> str:
    """The CUDA device this process will use ("CUDA simulator" under
    ``NUMBA_ENABLE_CUDASIM=1``); ``SystemExit`` with the reason when there is none, so a
    GPU worker never quietly runs its jobs elsewhere."""
    try:
        from crunchql.compute.gpu import compat

        if compat.gpu_available():
            if compat.SIMULATOR:  # its uint64 hashes wrap on NumPy scalars, which warn
                warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
            return compat.device_name()
        reason = "numba finds no CUDA GPU (driver, CUDA_VISIBLE_DEVICES?)"
    except Exception as error:  # numba-cuda missing, a broken driver
        reason = f"{type(error).__name__}: {error}"
    raise SystemExit(
        f"crunchql worker --device gpu: no CUDA device: {reason}. Run it on a machine with "
        "an NVIDIA GPU, or set NUMBA_ENABLE_CUDASIM=1 for numba's CUDA simulator (tests)."
    )


def start_scheduler(
    settings: Settings, broker: CrunchRedisBroker, publish: Announce | None = None
) -> Scheduler:
    """A scheduler contending for leadership (CRUNCHQL_RUN_SCHEDULER=false or
    `crunchql worker --no-scheduler` turns it off), on its own engine."""
    from crunchql.runtime import limits_from

    factory = create_session_factory(create_scheduler_engine(settings))
    scheduler = build_scheduler(
        settings,
        factory,
        DramatiqJobQueue(broker, router_from(settings, factory)),
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
        if self.settings.worker_device == "gpu":
            device = check_gpu()
            from crunchql.compute.gpu import jobs

            jobs.warm_up()
            logger.info("GPU kernels ready on %s in %.2f s", device,
                        time.perf_counter() - started)  # fmt: skip
            return
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
