"""Job queues: Dramatiq on Redis for production, in-process for the embedded mode."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage
from redis.asyncio import Redis as AsyncRedis

from crunchql.compute.catalog import warm_up_all
from crunchql.core.lifecycle import RunOutcome
from crunchql.services.container import Infrastructure, Work
from crunchql.workers.broker import QUEUE_NAME, CrunchRedisBroker
from crunchql.workers.routing import GpuRouter
from crunchql.workers.runner import RunnerConfig, run_with_policy
from crunchql.workers.shards import run_shard_with_policy

logger = logging.getLogger("crunchql.queue")
ACTOR_NAME = "calculation.run"
SHARD_ACTOR_NAME = "calculation.shard"
SEND_TIMEOUT_SECONDS = 5.0
WORK_OPTION = "crunchql_work"
"""The message option that says what a ``calculation.run`` computes: kind and input."""


def work_option(work: Work) -> dict[str, Any]:
    return {"kind": work.kind, "input": dict(work.input)}


def work_of(message: dramatiq.Message[Any] | None) -> Work | None:
    """The :data:`WORK_OPTION` of a message, or None (absent or not of that shape)."""
    option = message.options.get(WORK_OPTION) if message is not None else None
    if not isinstance(option, dict):
        return None
    kind, params = option.get("kind"), option.get("input")
    if not isinstance(kind, str) or not isinstance(params, dict):
        return None
    return Work(kind, params)


class DramatiqJobQueue:
    """Sends ``calculation.run`` and ``calculation.shard`` messages; the API never imports
    the actors themselves.

    With a ``router`` (:mod:`workers.routing`) each message goes to ``calculations.gpu``
    or ``calculations`` by its kind, size and whether a GPU worker is alive; without
    one (and for ``work=None`` while no GPU worker is alive) to ``calculations``.
    With ``redis`` (an asyncio client of the broker's server), ``enqueue`` sends from
    the event loop; without, from a thread with the broker's own client.
    """

    def __init__(
        self,
        broker: CrunchRedisBroker,
        router: GpuRouter | None = None,
        redis: AsyncRedis | None = None,
    ) -> None:
        self.broker = broker
        self.router = router
        self.redis = redis

    @staticmethod
    def _run_message(
        calculation_id: uuid.UUID, queue_name: str = QUEUE_NAME, work: Work | None = None
    ) -> dramatiq.Message[None]:
        # What the calculation computes rides along as an option (old workers ignore it):
        # a worker may then run a tiny one without claiming it first (workers.runner's
        # quick_run), checking it against the row as it stores the result.
        options = {} if work is None or work.shards != 1 else {WORK_OPTION: work_option(work)}
        return dramatiq.Message(
            queue_name=queue_name,
            actor_name=ACTOR_NAME,
            args=(str(calculation_id),),
            kwargs={},
            options=options,
        )

    def send(
        self, calculation_id: uuid.UUID, queue_name: str = QUEUE_NAME, work: Work | None = None
    ) -> None:
        # Wakes an idle consumer too (CrunchRedisBroker).
        self.broker.enqueue(self._run_message(calculation_id, queue_name, work))

    async def _queue(
        self, calculation_id: uuid.UUID, work: Work | None, shards: int | None = None
    ) -> str:
        if self.router is None:
            return QUEUE_NAME
        if work is None:
            return await self.router.queue_for_id(calculation_id, shards)
        return await self.router.queue_for(work)

    async def enqueue(self, calculation_id: uuid.UUID, work: Work | None = None) -> None:
        # Bounded: the row is committed, and a send that does not go through is re-sent
        # by the workers' sweeper, so a caller never waits long on Redis.
        queue_name = await self._queue(calculation_id, work)
        if self.redis is not None:
            message = self._run_message(calculation_id, queue_name, work)
            await asyncio.wait_for(
                self.broker.enqueue_async(self.redis, message), SEND_TIMEOUT_SECONDS
            )
        else:
            await asyncio.wait_for(
                asyncio.to_thread(self.send, calculation_id, queue_name, work),
                SEND_TIMEOUT_SECONDS,
            )

    def send_shard(
        self, calculation_id: uuid.UUID, shard: int, queue_name: str = QUEUE_NAME
    ) -> None:
        """A ``calculation.shard`` message, keyed by (calculation, shard)."""
        message: dramatiq.Message[None] = dramatiq.Message(
            queue_name=queue_name,
            actor_name=SHARD_ACTOR_NAME,
            args=(str(calculation_id), shard),
            kwargs={},
            options={},
        )
        self.broker.enqueue(message)  # wakes an idle consumer too (CrunchRedisBroker)

    async def enqueue_shard(
        self, calculation_id: uuid.UUID, shard: int, work: Work | None = None
    ) -> None:
        """Each shard is routed on its own share of the job (``work.shards``)."""
        queue_name = await self._queue(calculation_id, work)
        await asyncio.wait_for(
            asyncio.to_thread(self.send_shard, calculation_id, shard, queue_name),
            SEND_TIMEOUT_SECONDS,
        )


async def run_message(
    services: Infrastructure, config: RunnerConfig, executor: Executor, calculation_id: str
) -> None:
    """The body of the ``calculation.run`` actor: one delivery, with the policy applied.

    Dramatiq's Retries middleware keeps the retry count in the message; whether to retry
    at all, and when, is ``run_with_policy``'s decision (``config.retry``), which asks
    for it by ``dramatiq.Retry`` (the only exception the broker retries).
    """
    try:
        parsed = uuid.UUID(calculation_id)
    except ValueError:
        return  # not ours to run; a retry would not help
    message = CurrentMessage.get_current_message()
    retries = int(message.options.get("retries", 0)) if message else 0
    stats = await run_with_policy(
        services, config, parsed, executor, retries=retries, work=work_of(message)
    )
    if stats.outcome is RunOutcome.RETRY:
        delay = config.retry.backoff(retries)
        raise dramatiq.Retry(f"calculation {parsed}: retry {retries + 1}", delay=int(delay * 1000))


async def run_shard_message(
    services: Infrastructure,
    config: RunnerConfig,
    executor: Executor,
    calculation_id: str,
    shard: int,
) -> None:
    """The body of the ``calculation.shard`` actor: one delivery of one shard."""
    try:
        parsed = uuid.UUID(calculation_id)
    except ValueError:
        return
    if type(shard) is not int or shard < 0:
        return
    message = CurrentMessage.get_current_message()
    retries = int(message.options.get("retries", 0)) if message else 0
    stats = await run_shard_with_policy(services, config, parsed, shard, executor, retries=retries)
    if stats.outcome is RunOutcome.RETRY:
        delay = config.retry.backoff(retries)
        raise dramatiq.Retry(f"calculation {parsed} shard {shard}", delay=int(delay * 1000))


# How long a stopping API process lets its embedded runs finish before cancelling them.
SHUTDOWN_GRACE_SECONDS = 5.0


class EmbeddedJobQueue:
    """Runs calculations as tasks of the API's own event loop, kernels in one thread.

    One kernel thread: numba's default threading layer must not run two parallel
    regions at once, and each kernel already uses every core.
    """

    def __init__(
        self,
        services: Infrastructure,
        config: RunnerConfig,
        *,
        concurrency: int = 4,
    ) -> None:
        self.services = services
        self.config = config
        self._slots = asyncio.Semaphore(concurrency)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crunchql-kernel")
        self._tasks: set[asyncio.Task[None]] = set()
        if config.requeue is None:
            # Waiting calculations (an owner at the running limit) are started again
            # here when one of the owner's runs ends.
            config.requeue = self.enqueue

    def warm_up(self) -> None:
        """Compile or load every kernel in the kernel thread, ahead of the first job
        (which simply queues behind it)."""
        self._executor.submit(warm_up_all)

    async def enqueue(self, calculation_id: uuid.UUID, work: Work | None = None) -> None:
        # One process, CPU kernels only: nothing to route. ``work`` allows a quick run,
        # as for a worker's message (workers.runner.quick_run).
        self._spawn(calculation_id, take_over=False, work=work)

    def _spawn(
        self, calculation_id: uuid.UUID, *, take_over: bool, work: Work | None = None
    ) -> None:
        task = asyncio.create_task(self._run(calculation_id, take_over, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, calculation_id: uuid.UUID, take_over: bool, work: Work | None) -> None:
        async with self._slots:
            retries = 0
            while True:
                # A retry takes the run over at once: this process owns every run, and
                # the hand-back before a retry is best effort.
                stats = await run_with_policy(
                    self.services,
                    self.config,
                    calculation_id,
                    self._executor,
                    retries=retries,
                    take_over=take_over or retries > 0,
                    work=work,
                )
                if stats.outcome is not RunOutcome.RETRY:
                    return
                await asyncio.sleep(self.config.retry.backoff(retries))
                retries += 1

    async def enqueue_shard(
        self, calculation_id: uuid.UUID, shard: int, work: Work | None = None
    ) -> None:
        task = asyncio.create_task(self._run_shard(calculation_id, shard))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_shard(self, calculation_id: uuid.UUID, shard: int) -> None:
        async with self._slots:
            retries = 0
            while True:
                stats = await run_shard_with_policy(
                    self.services, self.config, calculation_id, shard, self._executor,
                    retries=retries, take_over=retries > 0,
                )  # fmt: skip
                if stats.outcome is not RunOutcome.RETRY:
                    return
                await asyncio.sleep(self.config.retry.backoff(retries))
                retries += 1

    async def recover(self, calculation_ids: list[uuid.UUID]) -> None:
        """After a restart: every QUEUED or RUNNING row belongs to this single process."""
        for calculation_id in calculation_ids:
            self._spawn(calculation_id, take_over=True)

    async def close(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Stops running calculations: those that finish within ``grace`` seconds end
        normally, the rest are cancelled (their rows stay RUNNING and are taken over at
        the next start, ``recover``).

        Not cancelled at once: a task cancelled in the middle of a statement leaves its
        SQLite connection to be torn down under it, and another run's statement could
        then wait out SQLite's 30 s busy timeout before the process could exit (seen in
        about one shutdown in eight with 25 tiny runs in flight)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._executor.shutdown(wait=False, cancel_futures=True)
