"""The Dramatiq Redis broker, tuned for short pick-up and quick recovery.

Timing, deliberately set:
- ``heartbeat_timeout`` 15 s (Dramatiq's default is 60 s): a broker whose process died
  is considered gone after 15 s; its unacknowledged messages are requeued at the next
  maintenance pass, which runs on ``maintenance_chance`` (1 %) of broker commands.
  Our own sweeper (``workers.lifecycle``) does not wait for that: it re-sends any
  calculation whose run has not beaten for ``CRUNCHQL_WORKER_STALE_SECONDS``.
- An idle consumer does not poll: it blocks on a wake-up list that every enqueue
  pushes to, so a job starts within a millisecond or two of ``send``. The push is part
  of the broker's own ``do_enqueue`` (the Lua enqueue and the LPUSH go out in one
  pipeline, one round trip), so EVERY enqueue wakes a consumer: ours, Dramatiq's
  re-enqueue of a delayed message (retries) and its requeue on shutdown. Before, only
  ``DramatiqJobQueue.send`` pushed, and a retry sat in the main queue until the idle
  consumer's fall-back timeout. The delay-queue consumer blocks no longer than the
  earliest eta it holds, so a retry is re-enqueued when due, not up to 1 s later.
  The block is bounded by ``worker_timeout`` (1 s) as a last resort (messages that
  Dramatiq's maintenance requeues from a dead worker push no wake-up).
- While every message it prefetched is still being worked on, a consumer waits for
  the next acknowledgement (a worker thread signals it), not for a polling interval:
  it polled every 50 ms, and 16 prefetched messages per 50 ms capped a process at
  about 300 tiny calculations per second (measured: 153/s with 8 threads, 230/s with
  32, where the worker's CPU allowed more). It still touches Redis once a second, so
  its heartbeat stays fresh during long jobs and its messages are not requeued.
- A worker thread's acknowledgement is not a round trip of its own: the consumer thread
  sends the acknowledgements made since its last command in the same pipeline as its
  next fetch, which each acknowledgement wakes it for (Dramatiq sent each from the
  worker thread, one round trip per message). While the consumer sleeps on the wake-up
  list, and once it is closed, a worker thread sends its own at once, as Dramatiq does.
  Only finished messages are acknowledged, so one that a crash leaves unacknowledged is
  delivered again and finds its calculation finished.
"""

from __future__ import annotations

import heapq
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import dramatiq
import redis
from dramatiq.asyncio import EventLoopThread, set_event_loop_thread
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis
from dramatiq.middleware import (
    AsyncIO,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
)
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import NoScriptError

from crunchql.pubsub.autopipeline import autopipeline, raise_errors
from crunchql.pubsub.channels import queue_wakeup_key

QUEUE_NAME = "calculations"
GPU_QUEUE_NAME = "calculations.gpu"
"""The queue only ``crunchql worker --device gpu`` processes consume (workers.routing)."""
HEARTBEAT_TIMEOUT_MS = 15_000
MAINTENANCE_CHANCE = 10_000  # per million commands
BUSY_HEARTBEAT_SECONDS = 1.0
WAKEUP_LIST_LENGTH = 1000  # tokens kept; a busy consumer fetches without popping them


class WakeUpConsumer(_RedisConsumer):
    """A Redis consumer that sleeps on a wake-up list instead of polling with backoff."""

    _last_touch = 0.0
    broker: CrunchRedisBroker

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        # Etas (ms) of the delayed messages this consumer handed to the consumer thread,
        # which re-enqueues each once due, but only between two of our __next__ calls.
        self._etas: list[int] = []
        # Set by every ack and nack (worker threads): a prefetched message is done.
        self._slot_freed = threading.Event()
        # The acknowledgements the consumer thread sends with its next command.
        self._acks = self.broker.pending_acks(self.queue_name)
        self._acks.defer()

    def ack(self, message: Any) -> None:
        try:
            if self._acks.add(message.options["redis_message_id"]):
                self.queued_message_ids.discard(message.message_id)
            else:
                super().ack(message)  # type: ignore[no-untyped-call]
        finally:
            self._slot_freed.set()

    def close(self) -> None:
        """Send what is still deferred; from now on worker threads send their own."""
        try:
            self._send_acks(self._acks.stop_deferring())
        except redis.RedisError as error:
            # Kept for a consumer started after this one. As a connection error, which
            # Dramatiq's consumer thread (and its worker's shutdown) expects from close.
            raise dramatiq.ConnectionClosed(error) from None  # type: ignore[no-untyped-call]

    def _send_acks(self, ids: list[str], *then: tuple[Any, ...]) -> list[Any]:
        """Acknowledge ``ids`` and run the dispatch commands ``then``, in one round trip;
        the replies of ``then``. Acknowledgements that do not go through are kept for
        the next attempt (one is harmless twice)."""
        if not ids and not then:
            return []
        try:
            replies = self.broker.dispatch_many(
                self.queue_name, [*(("ack", message_id) for message_id in ids), *then]
            )
        except BaseException:
            self._acks.give_back(ids)
            raise
        return replies[len(ids) :]

    def nack(self, message: Any) -> None:
        try:
            super().nack(message)  # type: ignore[no-untyped-call]
        finally:
            self._slot_freed.set()

    def _sleep(self, timeout: float) -> None:
        """Block until an enqueue pushes a wake-up (or ``timeout`` passes); meanwhile
        worker threads send their acknowledgements themselves."""
        try:
            self._send_acks(self._acks.stop_deferring())
            self.broker.client.blpop([queue_wakeup_key(self.queue_name)], timeout)
        finally:
            self._acks.defer()

    def _idle_timeout(self, longest: float | None = None) -> float:
        """Seconds to block on the wake-up list (or, busy, on an acknowledgement): the
        fall-back timeout (or ``longest``), or less when a delayed message this consumer
        holds falls due sooner (0: one is due now)."""
        timeout = max(float(self.timeout) / 1000, 0.1) if longest is None else longest
        if self._etas:
            now = int(current_millis())
            if self._etas[0] <= now:
                while self._etas and self._etas[0] <= now:
                    heapq.heappop(self._etas)
                return 0.0
            timeout = min(timeout, (self._etas[0] - now) / 1000)
        return timeout

    def __next__(self) -> Any:
        try:
            if not self.message_cache and self.outstanding_message_count < self.prefetch:
                wanted = self.prefetch - self.outstanding_message_count
                (fetched,) = self._send_acks(self._acks.take(), ("fetch", wanted))
                self.message_cache = fetched
                if not self.message_cache:
                    timeout = self._idle_timeout()
                    if timeout > 0:
                        self._sleep(timeout)
                    return None
            elif not self.message_cache:
                # Every prefetched message is still being worked on: wait for an ack
                # (cleared before the count is read again, so none is missed).
                self._slot_freed.clear()
                now = time.monotonic()
                # Acks that free no slot of ours (messages of a consumer before this one,
                # after a restart) go out here, with the heartbeat's command.
                acks = self._acks.take()
                if acks or now - self._last_touch >= BUSY_HEARTBEAT_SECONDS:
                    self._last_touch = now
                    self._send_acks(acks, ("qsize",))  # refreshes our heartbeat
                if self.outstanding_message_count >= self.prefetch:
                    until_touch = self._last_touch + BUSY_HEARTBEAT_SECONDS - now
                    self._slot_freed.wait(self._idle_timeout(max(until_touch, 0.0)))
                return None
            message = super().__next__()  # type: ignore[no-untyped-call]
            eta = message.options.get("eta") if message is not None else None
            if isinstance(eta, int):
                heapq.heappush(self._etas, eta)
            return message
        except redis.ConnectionError as error:
            raise dramatiq.ConnectionClosed(error) from None  # type: ignore[no-untyped-call]


class PendingAcks:
    """The acknowledgements of one queue's messages that worker threads made and the
    consumer thread has not sent yet (the broker's, so that a consumer restarted after a
    connection error sends what the one before could not)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: list[str] = []
        self._deferring = False  # whether a consumer thread will send them

    def add(self, message_id: str) -> bool:
        """Keep ``message_id`` for the consumer thread to send; False (kept nothing) when
        no consumer thread will: the caller sends it."""
        with self._lock:
            if self._deferring:
                self._ids.append(message_id)
            return self._deferring

    def take(self) -> list[str]:
        with self._lock:
            ids, self._ids = self._ids, []
        return ids

    def give_back(self, ids: list[str]) -> None:
        with self._lock:
            self._ids[:0] = ids

    def defer(self) -> None:
        """From now on, acknowledgements wait for the consumer thread."""
        with self._lock:
            self._deferring = True

    def stop_deferring(self) -> list[str]:
        """From now on, each is sent by its worker thread; the ones kept until now."""
        with self._lock:
            self._deferring = False
            ids, self._ids = self._ids, []
        return ids


class CrunchRedisBroker(RedisBroker):
    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return WakeUpConsumer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._pending_acks: dict[str, PendingAcks] = {}

    def pending_acks(self, queue_name: str) -> PendingAcks:
        """The acknowledgements on ``queue_name`` kept for a consumer thread to send."""
        return self._pending_acks.setdefault(queue_name, PendingAcks())  # atomic

    def _dispatch_args(self, command: str, queue_name: str, *args: Any) -> list[Any]:
        """EVALSHA's arguments for Dramatiq's dispatch script (as ``RedisBroker._dispatch``)."""
        script = self.scripts["dispatch"]
        return [
            script.sha,
            1,
            self.namespace,
            command,
            current_millis(),
            queue_name,
            self.broker_id,
            self.heartbeat_timeout,
            self.dead_message_ttl,
            self._should_do_maintenance(command),
            self._max_unpack_size(),  # type: ignore[no-untyped-call]
            *args,
        ]

    def _enqueue_args(self, queue_name: str, message_id: str, data: bytes) -> list[Any]:
        return self._dispatch_args("enqueue", queue_name, message_id, data)

    def _pipelined(self, fill: Callable[[Any], None]) -> list[Any]:
        """The replies of the pipeline ``fill`` makes, in one round trip. EVALSHA straight
        into the pipeline: a script registered with the pipeline makes redis-py send
        SCRIPT EXISTS first, a second round trip each time. When the server does not
        know the script (restarted, flushed), it is loaded and the pipeline sent again:
        what it holds must be harmless twice."""
        for attempt in (1, 2):
            with self.client.pipeline(transaction=False) as pipe:
                fill(pipe)
                try:
                    return cast(list[Any], pipe.execute())
                except NoScriptError:
                    if attempt == 2:
                        raise
                    self.scripts["dispatch"].sha = self.client.script_load(
                        self.scripts["dispatch"].script
                    )
        raise AssertionError("unreachable")

    def dispatch_many(self, queue_name: str, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Commands of Dramatiq's dispatch script (``("ack", id)``, ``("fetch", n)``) on
        ``queue_name``, in one round trip; their replies, in order."""

        def fill(pipe: Any) -> None:
            for command, *args in commands:
                pipe.evalsha(*self._dispatch_args(command, queue_name, *args))

        return self._pipelined(fill)

    def do_enqueue(self, queue_name: str, message_id: str, data: bytes) -> None:
        """Dramatiq's enqueue script and a wake-up push, in one round trip.

        Every enqueue goes through here (Dramatiq's ``enqueue`` calls it, for new
        messages, retries and delayed ones alike), so no enqueue can leave an idle
        consumer asleep. The push follows the script on the same connection, so a
        consumer it wakes finds the message (sent twice when the server had to load the
        script: the first push then only wakes a consumer twice).
        """

        def fill(pipe: Any) -> None:
            pipe.evalsha(*self._enqueue_args(queue_name, message_id, data))
            self._push_wakeup(pipe, queue_name)

        self._pipelined(fill)

    async def enqueue_async(
        self, client: AsyncRedis, message: dramatiq.Message[Any]
    ) -> dramatiq.Message[Any]:
        """``enqueue`` (no delay) on an asyncio Redis client: the API sends from its
        event loop, without a hop to a thread and back per submit. The same message,
        middleware hooks, Lua script and wake-up as ``do_enqueue``, in one round trip."""
        message = message.copy(options={"redis_message_id": str(uuid.uuid4())})
        self.emit_before("enqueue", message, None)
        args = self._enqueue_args(
            message.queue_name, message.options["redis_message_id"], message.encode()
        )
        for attempt in (1, 2):
            # With the other commands of this turn (other submits' jobs, their events).
            replies = await autopipeline(client).execute(
                ("EVALSHA", *args),
                *self._wakeup_commands(message.queue_name),
            )
            if isinstance(replies[0], NoScriptError) and attempt == 1:
                sha = await client.script_load(self.scripts["dispatch"].script)
                self.scripts["dispatch"].sha = args[0] = sha
                continue
            raise_errors(replies)
            break
        self.emit_after("enqueue", message, None)
        return message

    def do_requeue(self, queue_name: str, *message_ids: str) -> None:
        """Dramatiq's requeue (a stopping consumer hands its prefetched messages back),
        then a wake-up, so another consumer takes them at once."""
        self._dispatch("requeue")(queue_name, *message_ids)  # type: ignore[no-untyped-call]
        if message_ids:  # a consumer closing with nothing prefetched hands nothing back
            self.wake(queue_name)

    def flush_all(self) -> None:
        """Dramatiq's flush of every declared queue, and their wake-up lists: a token left
        from before would wake an idle consumer for nothing (and fail the tests that
        wait for a consumer to block)."""
        super().flush_all()
        queues = {q for name in self.get_declared_queues() for q in (name, f"{name}.DQ")}
        self.client.delete(*(queue_wakeup_key(name) for name in sorted(queues)))

    def take_all(
        self, queue_name: str, limit: int = 1000
    ) -> list[tuple[str, dramatiq.Message[Any]]]:
        """Take up to ``limit`` waiting messages of ``queue_name`` (and of its delay queue)
        into this broker's unacknowledged set, each with the queue it came from, for a
        caller that re-sends them elsewhere and then acknowledges them (:meth:`ack_taken`):
        if this process dies in between, Dramatiq gives them back to their queue once this
        broker's heartbeat is stale.

        Dramatiq's maintenance runs first, whatever ``maintenance_chance`` says, so the
        messages a dead consumer had fetched but not acknowledged are back in the queue
        and taken too (a consumer is dead ``heartbeat_timeout`` after its last command).
        """
        taken: list[tuple[str, dramatiq.Message[Any]]] = []
        for name in (queue_name, f"{queue_name}.DQ"):
            while len(taken) < limit:
                batch = self.scripts["dispatch"](
                    keys=[self.namespace],
                    args=[
                        "fetch",
                        current_millis(),
                        name,
                        self.broker_id,
                        self.heartbeat_timeout,
                        self.dead_message_ttl,
                        1,  # maintenance now
                        self._max_unpack_size(),  # type: ignore[no-untyped-call]
                        min(100, limit - len(taken)),
                    ],
                )
                if not batch:
                    break
                for data in batch:
                    if data is None:  # acknowledged meanwhile
                        continue
                    taken.append((name, dramatiq.Message.decode(data)))
        return taken

    def ack_taken(self, taken: list[tuple[str, dramatiq.Message[Any]]]) -> None:
        """Acknowledge what :meth:`take_all` took: it is gone from its queue (one round
        trip per queue)."""
        by_queue: dict[str, list[tuple[Any, ...]]] = {}
        for name, message in taken:
            message_id = message.options.get("redis_message_id")
            if message_id:
                by_queue.setdefault(name, []).append(("ack", message_id))
        for name, acks in by_queue.items():
            self.dispatch_many(name, acks)

    def wake(self, queue_name: str = QUEUE_NAME) -> None:
        """Wake one idle consumer of ``queue_name``."""
        with self.client.pipeline(transaction=False) as pipe:
            self._push_wakeup(pipe, queue_name)
            pipe.execute()

    @staticmethod
    def _wakeup_commands(queue_name: str) -> tuple[tuple[Any, ...], ...]:
        key = queue_wakeup_key(queue_name)
        # A token for one idle consumer; the list never grows unbounded.
        return ("LPUSH", key, 1), ("LTRIM", key, 0, WAKEUP_LIST_LENGTH - 1)

    @classmethod
    def _push_wakeup(cls, pipe: Any, queue_name: str) -> None:
        for command in cls._wakeup_commands(queue_name):
            pipe.execute_command(*command)


class _DaemonEventLoopThread(EventLoopThread):
    def __init__(self, logger: Any, interrupt_check_ival: float = 0.1) -> None:
        super().__init__(logger, interrupt_check_ival)
        self.daemon = True
        # uvloop where it is installed (uvicorn[standard] brings it on Linux and macOS):
        # the loop the API already runs on under Uvicorn, for every claim, finish, event
        # and wake-up of the worker (2-3 % less worker CPU per tiny job than asyncio's
        # selector loop, within the noise: docs/benchmarks.md, sixth round).
        try:
            import uvloop
        except ImportError:  # Windows, or a slimmed install: asyncio's own loop
            return
        self.loop.close()
        self.loop = uvloop.new_event_loop()


class DaemonAsyncIO(AsyncIO):
    """Dramatiq's AsyncIO middleware with its event loop in a daemon thread.

    Dramatiq's answer to a second SIGTERM is ``sys.exit`` in the worker process's main
    thread, whatever the shutdown was doing. With the loop in a normal thread that nobody
    stops any more, the interpreter then waited on it forever: the process kept running
    (and heartbeating, so it still counted as a live worker) until a SIGKILL. As a
    daemon, the loop ends with the process; a job it was running is taken over by
    another worker once the heartbeat is stale, as after any crash.
    """

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        thread = _DaemonEventLoopThread(self.logger)
        thread.start(timeout=1.0)
        set_event_loop_thread(thread)


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
        DaemonAsyncIO(),
        *(extra or []),
    ]


def create_broker(
    redis_url: str, *, extra_middleware: list[Middleware] | None = None
) -> CrunchRedisBroker:
    # Timeouts, so that a Redis that drops packets fails a send in seconds instead of
    # hanging a request for the operating system's two minutes (BLPOP waits at most 1 s).
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=10)
    broker = CrunchRedisBroker(
        client=client,
        middleware=standard_middleware(extra_middleware),
        namespace="crunchql",
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
    )
    broker.declare_queue(QUEUE_NAME)
    broker.declare_queue(GPU_QUEUE_NAME)
    return broker
