"""The scheduler: one leader among any number of scheduler processes fires what is due.

Leadership is a PostgreSQL session-level advisory lock, held on a connection of its
own. A leader that dies (even SIGKILL) closes that connection and PostgreSQL frees the
lock at once; the followers try for it every ``follower_retry`` seconds, so one takes
over within that. Every transaction the leader writes first checks, inside itself,
that its lock connection still holds the lock (``fence``): a leader cut off from the
database cannot fire next to its successor. Fire records are unique on (schedule,
instant) in any case.

The leader sleeps until the next due instant, or until schedules change (a NOTIFY on
the lock connection; an in-process signal in embedded mode), never polling faster.
With SQLite (embedded mode, one process) there is no lock: the process leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from crunchql.core.lifecycle import CalculationEvent
from crunchql.core.settings import Settings
from crunchql.db.engine import create_engine, read_only
from crunchql.db.repositories.schedule import (
    CHANGES_CHANNEL,
    LEADER_LOCK_KEY,
    ScheduleRepository,
)
from crunchql.observability.metrics import record_fires, set_leader
from crunchql.services.container import JobQueue, Limits, Work
from crunchql.services.schedule_fire import Announce, FireConfig, fire_batch
from crunchql.services.schedules import changes

logger = logging.getLogger("crunchql.scheduler")
ERROR_BACKOFF_SECONDS = 1.0


class LeadershipLostError(RuntimeError):
    """This process no longer holds the leader lock: stop writing at once."""


class Leadership(Protocol):
    @property
    def identity(self) -> str: ...

    async def try_acquire(self, wake: asyncio.Event) -> bool:
        """Become the leader if nobody is; ``wake`` is set when schedules change."""
        ...

    async def fence(self, session: AsyncSession) -> None:
        """Raise LeadershipLostError unless still the leader (inside ``session``'s
        transaction)."""
        ...

    async def release(self) -> None: ...


def process_identity() -> str:
    return f"{socket.gethostname()[:32]}:{os.getpid()}"


class LocalLeadership:
    """One process, no lock (SQLite, embedded mode)."""

    def __init__(self) -> None:
        self.identity = f"embedded {process_identity()}"

    async def try_acquire(self, wake: asyncio.Event) -> bool:
        return True

    async def fence(self, session: AsyncSession) -> None:
        return None

    async def release(self) -> None:
        return None


class PostgresLeadership:
    """``pg_try_advisory_lock`` on a dedicated connection (never a pooled one: the
    lock belongs to the database session)."""

    def __init__(self, database_url: str) -> None:
        self.dsn = (
            make_url(database_url)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        self.identity = f"crunchql-scheduler {process_identity()}"
        self._connection: Any = None  # asyncpg.Connection
        self._pid: int | None = None
        self._wake: asyncio.Event | None = None

    async def _connect(self) -> Any:
        connection = await asyncpg.connect(
            self.dsn,
            timeout=10,
            server_settings={
                # Shown in pg_stat_activity, and so in /readyz: who leads.
                "application_name": self.identity[:63],
                # A leader whose host vanishes without closing the socket is noticed by
                # the server in about 10 s, which then frees the lock.
                "tcp_keepalives_idle": "5",
                "tcp_keepalives_interval": "2",
                "tcp_keepalives_count": "2",
            },
        )
        connection.add_termination_listener(self._on_terminated)
        return connection

    def _on_terminated(self, _connection: Any) -> None:
        self._connection = None
        if self._wake is not None:
            self._wake.set()  # the leader loop finds out at its next fence

    def _on_notify(self, *_args: Any) -> None:
        if self._wake is not None:
            self._wake.set()

    async def try_acquire(self, wake: asyncio.Event) -> bool:
        self._wake = wake
        try:
            if self._connection is None or self._connection.is_closed():
                self._connection = await self._connect()
                self._pid = await self._connection.fetchval("SELECT pg_backend_pid()")
            got = bool(
                await self._connection.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY)
            )
            if got:
                await self._connection.add_listener(CHANGES_CHANNEL, self._on_notify)
            return got
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
            logger.warning("scheduler cannot reach PostgreSQL for leadership: %s", error)
            await self._drop()
            return False

    async def fence(self, session: AsyncSession) -> None:
        held = (
            await session.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 "
                    "AND objid = :key AND objsubid = 1 AND pid = :pid AND granted"
                ),
                {"key": LEADER_LOCK_KEY, "pid": self._pid or 0},
            )
        ).scalar_one()
        if not held or self._connection is None:
            raise LeadershipLostError("the leader lock is no longer held")

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)

    async def release(self) -> None:
        connection = self._connection
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(Exception):
                await connection.fetchval("SELECT pg_advisory_unlock($1)", LEADER_LOCK_KEY)
        await self._drop()


class Outbox:
    """Sends the committed fires' messages in the background, so the next batch of due
    schedules does not wait on Redis (a thousand sends take a second or two). Still
    only after commit; a message lost here (the process dies first) is re-sent by the
    workers' lost-message sweep, as for any QUEUED calculation."""

    def __init__(self, queue: JobQueue, senders: int = 4, publish: Announce | None = None) -> None:
        self.queue = queue
        self.senders = senders
        self.publish = publish
        self._pending: asyncio.Queue[tuple[uuid.UUID, Work | None] | CalculationEvent] = (
            asyncio.Queue()
        )
        self._tasks: list[asyncio.Task[None]] = []
        # Cleared while the scheduler fires: sending (Redis, a thread hop per message)
        # would take the CPU from the fires still to be made.
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def enqueue(self, calculation_id: uuid.UUID, work: Work | None = None) -> None:
        self._put((calculation_id, work))

    async def announce(self, event: CalculationEvent) -> None:
        """Publish a fired calculation's "created" event for its owner's list views."""
        if self.publish is not None:
            self._put(event)

    def _put(self, item: tuple[uuid.UUID, Work | None] | CalculationEvent) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._send()) for _ in range(self.senders)]
        self._pending.put_nowait(item)

    async def _send(self) -> None:
        while True:
            item = await self._pending.get()
            await self.flowing.wait()
            try:
                if isinstance(item, CalculationEvent):
                    assert self.publish is not None
                    await self.publish(item)
                else:
                    await self.queue.enqueue(*item)
            except Exception as error:
                # A lost event costs a list view one live row (it shows on a re-read);
                # a lost message is re-sent by the workers' lost-message sweep.
                logger.warning("sending %s failed: %s", item, error)
            finally:
                self._pending.task_done()

    async def close(self, timeout: float = 5.0) -> None:
        self.flowing.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._pending.join(), timeout)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []


@dataclass(frozen=True)
class SchedulerConfig:
    fire: FireConfig
    max_sleep: float = 60.0
    follower_retry: float = 2.0
    lanes: int = 4


def config_from(settings: Settings, limits: Limits) -> SchedulerConfig:
    return SchedulerConfig(
        fire=FireConfig(
            limits=limits,
            grace=timedelta(seconds=settings.scheduler_misfire_grace_seconds),
            batch_size=settings.scheduler_batch_size,
        ),
        max_sleep=settings.scheduler_max_sleep_seconds,
        follower_retry=settings.scheduler_follower_retry_seconds,
        lanes=settings.scheduler_lanes,
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        queue: JobQueue,
        config: SchedulerConfig,
        leadership: Leadership,
        *,
        clock: Callable[[], datetime] = utcnow,
        publish: Announce | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.outbox = Outbox(queue, publish=publish)
        self.config = config
        self.leadership = leadership
        self.clock = clock
        self.leading = False
        self.leader_since: datetime | None = None
        self.wake = asyncio.Event()
        changes.listen(self.wake)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="crunchql-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.outbox.close()
        changes.forget(self.wake)

    def status(self) -> dict[str, Any]:
        return {
            "role": "leader" if self.leading else "follower",
            "identity": self.leadership.identity,
            "since": self.leader_since.isoformat() if self.leader_since else None,
        }

    async def _fire_due(self, now: datetime) -> None:
        while True:
            report = await fire_batch(
                self.session_factory,
                self.outbox,
                self.config.fire,
                now,
                fence=self.leadership.fence,
                clock=self.clock,
                announce=self.outbox.announce,
            )
            if report.processed or report.misfires:
                record_fires(
                    {k.value: v for k, v in report.outcomes.items()},
                    {k.value: v for k, v in report.misfires.items()},
                    report.lags,
                )
            if report.misfires:
                logger.warning("missed fires: %s", {k.value: v for k, v in report.misfires.items()})
            if report.processed < self.config.fire.batch_size:
                return

    def _lead(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            self.leader_since = self.clock() if leading else None
            set_leader(leading)
            if leading:
                logger.info("scheduler %s is now the leader", self.leadership.identity)
            else:
                logger.warning("scheduler %s is no longer the leader", self.leadership.identity)

    async def run(self) -> None:
        try:
            while True:
                if not self.leading:
                    if await self.leadership.try_acquire(self.wake):
                        self._lead(True)
                    else:
                        await asyncio.sleep(self.config.follower_retry)
                        continue
                try:
                    await self.pass_once()
                except LeadershipLostError:
                    self._lead(False)
                    await self.leadership.release()
                except Exception as error:
                    # The database is down or restarting: try again shortly; the fence
                    # tells whether we still lead.
                    logger.warning("scheduler pass failed: %s", error)
                    await asyncio.sleep(ERROR_BACKOFF_SECONDS)
        finally:
            self._lead(False)
            with contextlib.suppress(Exception):
                await asyncio.shield(self.leadership.release())

    async def pass_once(self) -> None:
        """Fire everything due, then sleep until the next instant or a change."""
        # Cleared before reading: a change committed after the read wakes us.
        self.wake.clear()
        now = self.clock()
        # Several transactions at once on PostgreSQL (each takes different due rows:
        # SKIP LOCKED), so a thousand fires due at one instant wait on the database
        # in parallel rather than in turn. One on SQLite, which has one writer.
        lanes = 1 if isinstance(self.leadership, LocalLeadership) else self.config.lanes
        self.outbox.flowing.clear()
        try:
            await asyncio.gather(*(self._fire_due(now) for _ in range(lanes)))
        finally:
            self.outbox.flowing.set()
        async with read_only(self.session_factory) as session:
            next_due = await ScheduleRepository(session).next_due_at()
        delay = self.config.max_sleep
        if next_due is not None:
            # A millisecond late rather than early: a timer that fires early finds
            # nothing due and goes round again.
            delay = min(delay, max(0.0, (next_due - self.clock()).total_seconds()) + 0.001)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), delay)


def create_scheduler_engine(settings: Settings) -> AsyncEngine:
    """A scheduler's own small engine, with synchronous commits (a fire it records must
    survive a database crash): a connection per lane, and as many again for a burst."""
    return create_engine(
        settings.database_url,
        pool_size=settings.scheduler_lanes,
        max_overflow=settings.scheduler_lanes,
        ping_after_idle=settings.database_ping_after_idle_seconds,
    )


def build_scheduler(
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    queue: JobQueue,
    limits: Limits,
    publish: Announce | None = None,
) -> Scheduler:
    leadership: Leadership = (
        LocalLeadership() if settings.is_sqlite else PostgresLeadership(settings.database_url)
    )
    return Scheduler(
        session_factory, queue, config_from(settings, limits), leadership, publish=publish
    )


async def serve(settings: Settings) -> None:
    """``crunchql scheduler``: a scheduler process, until SIGTERM or SIGINT."""
    from crunchql.db.engine import create_session_factory
    from crunchql.observability.metrics import start_worker_metrics_server
    from crunchql.pubsub.bus import RedisEventBus
    from crunchql.pubsub.redis_client import create_redis
    from crunchql.runtime import limits_from
    from crunchql.workers.broker import create_broker
    from crunchql.workers.queues import DramatiqJobQueue
    from crunchql.workers.routing import router_from

    assert settings.redis_url
    if settings.metrics:
        start_worker_metrics_server(settings.scheduler_metrics_port)
    engine = create_scheduler_engine(settings)
    broker = create_broker(settings.redis_url)
    redis = create_redis(settings.redis_url)
    factory = create_session_factory(engine)
    scheduler = build_scheduler(
        settings,
        factory,
        DramatiqJobQueue(broker, router_from(settings, factory)),
        limits_from(settings),
        publish=RedisEventBus(redis).publish,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    logger.info("scheduler %s started", scheduler.leadership.identity)
    scheduler.start()
    try:
        await stopping.wait()
    finally:
        await scheduler.stop()  # releases the lock: a follower takes over at once
        broker.close()
        await redis.aclose()
        await engine.dispose()
        logger.info("scheduler %s stopped", scheduler.leadership.identity)
