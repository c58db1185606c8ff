"""Which queue a calculation (or one shard) goes to: ``calculations`` or ``calculations.gpu``.

A message goes to the GPU queue when all three hold:

1. a GPU worker is alive: a ``workers`` row with ``device = 'gpu'`` and a heartbeat within
   ``CRUNCHQL_WORKER_STALE_SECONDS`` (the same heartbeats /readyz counts);
2. the kind has a GPU kernel (:data:`crunchql.compute.devices.GPU_KINDS`);
3. the job (for a shard: its share of the job) is estimated to cost at least
   ``CRUNCHQL_GPU_MIN_COST`` seconds of one CPU core (:func:`crunchql.compute.devices.cpu_cost`).

Otherwise it goes to the CPU queue. The liveness view is cached per process for
``CRUNCHQL_GPU_ALIVE_CACHE_SECONDS`` (1 s), so a submit adds no database round trip on the
hot path: only a job that passes 2 and 3 asks, and then at most one query per period per
process. ``CRUNCHQL_GPU_MIN_COST`` below zero turns routing off (every message: CPU).

A GPU worker that dies leaves messages in ``calculations.gpu``; the workers' sweeper moves
them to the CPU queue once no GPU worker is alive (:meth:`WorkerRuntime.sweep_once`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crunchql.compute.devices import cpu_cost, has_gpu_kernel
from crunchql.core.settings import Settings
from crunchql.db.engine import read_only
from crunchql.db.models import Calculation
from crunchql.db.repositories import WorkerRepository
from crunchql.services.container import Work
from crunchql.workers.broker import GPU_QUEUE_NAME, QUEUE_NAME

logger = logging.getLogger("crunchql.routing")


class GpuRouter:
    """Chooses the queue of each message (see the module docstring)."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        min_cost: float,
        stale_after: timedelta,
        cache_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_factory = session_factory
        self.min_cost = min_cost
        self.stale_after = stale_after
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._alive = False
        self._checked_at: float | None = None
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self.min_cost >= 0

    async def gpu_alive(self) -> bool:
        """Whether a GPU worker has a fresh heartbeat, as of at most ``cache_seconds`` ago.

        One query per period however many submits ask (concurrent askers wait for it);
        a failed query counts as "none alive" (the CPU queue always works)."""
        if self._fresh():
            return self._alive
        async with self._lock:
            if self._fresh():
                return self._alive
            try:
                async with read_only(self.session_factory) as session:
                    count = await WorkerRepository(session).count_alive(
                        datetime.now(UTC), self.stale_after, device="gpu"
                    )
                self._alive = count > 0
            except Exception as error:
                logger.warning("could not count GPU workers: %s", error)
                self._alive = False
            self._checked_at = self.clock()
            return self._alive

    def forget(self) -> None:
        """Drop the cached view (the next call asks the database)."""
        self._checked_at = None

    def _fresh(self) -> bool:
        return self._checked_at is not None and self.clock() - self._checked_at < self.cache_seconds

    def wants_gpu(self, work: Work) -> bool:
        """Conditions 2 and 3: a GPU kernel, and enough work to pay for sending it there."""
        if not self.enabled or not has_gpu_kernel(work.kind):
            return False
        cost = cpu_cost(work.kind, work.input)
        return cost is not None and cost / max(1, work.shards) >= self.min_cost

    async def queue_for(self, work: Work | None) -> str:
        if work is None or not self.wants_gpu(work):
            return QUEUE_NAME
        return GPU_QUEUE_NAME if await self.gpu_alive() else QUEUE_NAME

    async def queue_for_id(self, calculation_id: uuid.UUID, shards: int | None = None) -> str:
        """The queue for a calculation known only by id (a re-send, a hand-back): its kind
        and input are read only while a GPU worker is alive (else: the CPU queue)."""
        if not self.enabled or not await self.gpu_alive():
            return QUEUE_NAME
        try:
            async with read_only(self.session_factory) as session:
                row = (
                    await session.execute(
                        select(Calculation.kind, Calculation.input, Calculation.shards).where(
                            Calculation.id == calculation_id
                        )
                    )
                ).one_or_none()
        except Exception as error:  # the CPU queue runs anything
            logger.warning("could not read %s to route it: %s", calculation_id, error)
            return QUEUE_NAME
        if row is None:
            return QUEUE_NAME
        work = Work(row.kind, row.input, row.shards if shards is None else shards)
        return GPU_QUEUE_NAME if self.wants_gpu(work) else QUEUE_NAME


def router_from(settings: Settings, session_factory: async_sessionmaker[AsyncSession]) -> GpuRouter:
    """The router of a process that sends messages (API, worker, scheduler)."""
    return GpuRouter(
        session_factory,
        min_cost=settings.gpu_min_cost,
        stale_after=timedelta(seconds=settings.worker_stale_seconds),
        cache_seconds=settings.gpu_alive_cache_seconds,
    )
