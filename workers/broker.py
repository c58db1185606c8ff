"""The Dramatiq Redis broker, tuned for short pick-up and quick recovery.

Timing, deliberately set:
- ``heartbeat_timeout`` 15 s (Dramatiq's default is 60 s): a broker whose process died
  is considered gone after 15 s; its unacknowledged messages are requeued at the next
  maintenance pass, which runs on ``maintenance_chance`` (1 %) of broker commands.
  Our own sweeper (``workers.lifecycle``) does not wait for that: it re-sends any
  calculation whose run has not beaten for ``CRUNCHQL_WORKER_STALE_SECONDS``.
- An idle consumer does not poll: it blocks on a wake-up list that every enqueue
  pushes to, so a job starts within a millisecond or two of ``send``. The block is
  bounded by ``worker_timeout`` (1 s) as a fallback when a wake-up is missed.
- While all its threads are busy, a consumer still touches Redis once a second, so
  its heartbeat stays fresh during long jobs and its messages are not requeued.
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.middleware import (
    AsyncIO,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
)

from crunchql.pubsub.channels import queue_wakeup_key

QUEUE_NAME = "calculations"
HEARTBEAT_TIMEOUT_MS = 15_000
MAINTENANCE_CHANCE = 10_000  # per million commands
BUSY_HEARTBEAT_SECONDS = 1.0


class WakeUpConsumer(_RedisConsumer):
    """A Redis consumer that sleeps on a wake-up list instead of polling with backoff."""

    _last_touch = 0.0

    def __next__(self) -> Any:
        try:
            if not self.message_cache and self.outstanding_message_count < self.prefetch:
                self.message_cache = self.broker.do_fetch(
                    self.queue_name, self.prefetch - self.outstanding_message_count
                )
                if not self.message_cache:
                    # Block until an enqueue pushes a wake-up (or the timeout passes).
                    self.broker.client.blpop(
                        [queue_wakeup_key(self.queue_name)], timeout=max(self.timeout / 1000, 0.1)
                    )
                    return None
            elif not self.message_cache:
                now = time.monotonic()
                if now - self._last_touch >= BUSY_HEARTBEAT_SECONDS:
                    self._last_touch = now
                    self.broker.do_qsize(self.queue_name)  # refreshes our heartbeat
                time.sleep(0.05)
                return None
            return super().__next__()  # type: ignore[no-untyped-call]
        except redis.ConnectionError as error:
            raise dramatiq.ConnectionClosed(error) from None  # type: ignore[no-untyped-call]


class CrunchRedisBroker(RedisBroker):
    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return WakeUpConsumer

    def wake(self, queue_name: str = QUEUE_NAME) -> None:
        """Wake one idle consumer (the list is trimmed so it never grows unbounded)."""
        key = queue_wakeup_key(queue_name)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.lpush(key, 1)
            pipe.ltrim(key, 0, 999)
            pipe.execute()


def _retry_requested(_retries: int, error: BaseException) -> bool:
    return isinstance(error, dramatiq.Retry)


def standard_middleware(extra: list[Middleware] | None = None) -> list[Middleware]:
    """The middleware of every crunchql broker (the tests' stub broker included)."""
    return [
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        # Redelivers only what the actor asks to retry (dramatiq.Retry, with its delay):
        # how often and when is workers.runner.run_with_policy's decision.
        Retries(retry_when=_retry_requested),
        CurrentMessage(),
        AsyncIO(),
        *(extra or []),
    ]


def create_broker(
    redis_url: str, *, extra_middleware: list[Middleware] | None = None
) -> CrunchRedisBroker:
    # Timeouts, so that a Redis that drops packets fails a send in seconds instead of
    # hanging a request for the operating system's two minutes (BLPOP waits at most 1 s).
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=10)
    broker = CrunchRedisBroker(  # type: ignore[no-untyped-call]
        client=client,
        middleware=standard_middleware(extra_middleware),
        namespace="crunchql",
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
    )
    broker.declare_queue(QUEUE_NAME)
    return broker
