"""The Redis broker's wake-up consumer and the worker's lost-message sweep, on real Redis."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker

from crunchql.db.engine import unit_of_work
from crunchql.db.models import AuditEvent, AuthSession, Calculation, RefreshToken, User
from crunchql.pubsub.channels import queue_wakeup_key
from crunchql.workers import broker as broker_module
from crunchql.workers.broker import QUEUE_NAME, CrunchRedisBroker
from crunchql.workers.queues import ACTOR_NAME, DramatiqJobQueue


def test_an_idle_consumer_wakes_on_enqueue_instead_of_polling(broker: CrunchRedisBroker) -> None:
    # A 10 s idle timeout: without the wake-up the consumer would sleep that long.
    consumer = broker.consume(QUEUE_NAME, prefetch=1, timeout=10_000)
    calculation_id = uuid.uuid4()

    async def scenario() -> tuple[object, float]:
        idle = asyncio.create_task(asyncio.to_thread(next, consumer))
        await asyncio.sleep(0.2)  # let it block on the wake-up list
        sent = time.monotonic()
        DramatiqJobQueue(broker).send(calculation_id)
        first = await asyncio.wait_for(idle, 5)  # returns None: woken, not timed out
        message = await asyncio.to_thread(next, consumer)
        return (first, message), time.monotonic() - sent

    (first, message), elapsed = asyncio.run(scenario())
    assert first is None
    assert message is not None and message.actor_name == ACTOR_NAME
    assert message.args == (str(calculation_id),)
    assert elapsed < 5  # far below the 10 s the consumer would otherwise have slept
    consumer.ack(message)
    consumer.close()


def test_the_asyncio_enqueue_wakes_an_idle_consumer_and_delivers_the_message(
    broker: CrunchRedisBroker, redis_url: str
) -> None:
    # The API and the worker send from their event loop (DramatiqJobQueue with an asyncio
    # client): the same message and wake-up as the thread path, in one round trip. A
    # server that does not know the script (restarted, flushed) still gets the message:
    # here the broker's idea of the script's digest is wrong.
    from redis.asyncio import Redis

    consumer = broker.consume(QUEUE_NAME, prefetch=2, timeout=NEVER_MS)
    ids = [uuid.uuid4(), uuid.uuid4()]
    script = broker.scripts["dispatch"]
    real_sha = script.sha

    async def scenario() -> list[object]:
        client = Redis.from_url(redis_url)
        queue = DramatiqJobQueue(broker, redis=client)
        try:
            idle = asyncio.create_task(asyncio.to_thread(next, consumer))
            deadline = time.monotonic() + DEADLINE_SECONDS
            while blocked_consumers(broker) < 1:
                assert time.monotonic() < deadline, "the consumer never blocked"
                await asyncio.sleep(0.01)
            await queue.enqueue(ids[0])
            assert await asyncio.wait_for(idle, DEADLINE_SECONDS) is None  # woken
            script.sha = "0" * 40  # NOSCRIPT: loaded again, then sent
            await queue.enqueue(ids[1])
            return [await asyncio.to_thread(next, consumer) for _ in ids]
        finally:
            await client.aclose()

    fetched = asyncio.run(scenario())
    assert script.sha == real_sha
    assert [m.args for m in fetched] == [(str(each),) for each in ids]  # type: ignore[attr-defined]
    assert all(m.actor_name == ACTOR_NAME for m in fetched)  # type: ignore[attr-defined]
    for message in fetched:
        consumer.ack(message)
    consumer.close()


def test_the_thread_enqueue_loads_a_script_the_server_does_not_know(
    broker: CrunchRedisBroker,
) -> None:
    consumer = broker.consume(QUEUE_NAME, prefetch=1, timeout=NEVER_MS)
    script = broker.scripts["dispatch"]
    real_sha, script.sha = script.sha, "0" * 40
    calculation_id = uuid.uuid4()
    DramatiqJobQueue(broker).send(calculation_id)
    assert script.sha == real_sha

    deadline = time.monotonic() + DEADLINE_SECONDS
    message = None
    while message is None:
        assert time.monotonic() < deadline, "the message never arrived"
        message = next(consumer)
    assert message.args == (str(calculation_id),)
    consumer.ack(message)
    consumer.close()


# The fall-back timeout in the tests below is ten minutes: a consumer that misses a
# wake-up sleeps far past the deadline it is waited for with, so a lost wake-up fails
# the test every time instead of costing a second that timing would have to notice.
NEVER_MS = 600_000
DEADLINE_SECONDS = 30.0  # generous for a loaded 2-core machine, far below NEVER_MS


def blocked_consumers(broker: CrunchRedisBroker) -> int:
    """Connections blocked in BLPOP on this test's Redis database (other databases of
    the same server belong to other test runs)."""
    db = broker.client.connection_pool.connection_kwargs.get("db", 0)
    return sum(
        1
        for client in broker.client.client_list()
        if client.get("cmd") == "blpop"
        and "b" in client.get("flags", "")
        and int(client["db"]) == db
    )


def test_a_busy_consumer_fetches_again_when_a_message_is_acked_not_after_a_poll(
    broker: CrunchRedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every prefetched message is being worked on: the consumer waits for an ack. With
    # its once-a-second heartbeat touch pushed ten minutes out, nothing else ends that
    # wait: it polled every 50 ms before, and a process stalled in those steps.
    monkeypatch.setattr(broker_module, "BUSY_HEARTBEAT_SECONDS", 600.0)
    consumer = broker.consume(QUEUE_NAME, prefetch=1, timeout=NEVER_MS)
    queue = DramatiqJobQueue(broker)
    first_id, second_id = uuid.uuid4(), uuid.uuid4()
    queue.send(first_id)
    queue.send(second_id)
    first = next(consumer)
    while first is None:  # a wake-up token comes first
        first = next(consumer)
    assert first.args == (str(first_id),)
    busy = threading.Thread(target=next, args=(consumer,))
    busy.start()
    busy.join(0.3)
    assert busy.is_alive(), "the busy consumer returned without an ack"
    consumer.ack(first)  # a worker thread's ack
    busy.join(DEADLINE_SECONDS)
    assert not busy.is_alive(), "the ack did not end the busy consumer's wait"
    second = next(consumer)
    while second is None:
        second = next(consumer)
    assert second.args == (str(second_id),)
    consumer.ack(second)
    consumer.close()


def unacknowledged(broker: CrunchRedisBroker) -> set[str]:
    """The Redis ids of the messages this broker fetched and Redis holds unacknowledged."""
    key = f"{broker.namespace}:__acks__.{broker.broker_id}.{QUEUE_NAME}"
    return {member.decode() for member in broker.client.smembers(key)}


def redis_id(message: Any) -> str:
    return str(message.options["redis_message_id"])


def next_message(consumer: Any) -> Any:
    message = next(consumer)
    while message is None:  # a wake-up token first
        message = next(consumer)
    return message


def refuse_direct_acks(broker: CrunchRedisBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dramatiq's own acknowledgement (one round trip from the worker thread) fails."""

    def direct(*_args: object) -> None:
        raise AssertionError("a worker thread's ack made its own round trip")

    monkeypatch.setattr(broker, "do_ack", direct, raising=False)


def test_a_worker_thread_s_ack_goes_out_with_the_consumer_s_next_fetch(
    broker: CrunchRedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = broker.consume(QUEUE_NAME, prefetch=2, timeout=NEVER_MS)
    queue = DramatiqJobQueue(broker)
    for _ in range(3):
        queue.send(uuid.uuid4())
    first, second = next_message(consumer), next_message(consumer)
    refuse_direct_acks(broker, monkeypatch)
    consumer.ack(first)  # a worker thread's: no round trip of its own
    assert unacknowledged(broker) == {redis_id(first), redis_id(second)}
    third = next_message(consumer)  # the fetch of the slot it freed, with the ack
    assert unacknowledged(broker) == {redis_id(second), redis_id(third)}
    consumer.ack(second)
    consumer.ack(third)
    consumer.close()  # sends what is still kept
    assert unacknowledged(broker) == set()


def test_while_the_consumer_sleeps_a_worker_thread_acks_at_once(
    broker: CrunchRedisBroker,
) -> None:
    """Asleep on the wake-up list, the consumer sends nothing for a long while: an
    acknowledgement then goes out from the worker thread, as Dramatiq's does."""
    consumer = broker.consume(QUEUE_NAME, prefetch=2, timeout=NEVER_MS)
    DramatiqJobQueue(broker).send(uuid.uuid4())
    message = next_message(consumer)
    broker.client.delete(queue_wakeup_key(QUEUE_NAME))  # its wake-up, not popped
    asleep = threading.Thread(target=next, args=(consumer,))
    asleep.start()
    deadline = time.monotonic() + DEADLINE_SECONDS
    while blocked_consumers(broker) < 1:
        assert time.monotonic() < deadline, "the consumer never blocked"
        time.sleep(0.01)
    consumer.ack(message)
    assert unacknowledged(broker) == set()  # gone when ack returned
    broker.wake()
    asleep.join(DEADLINE_SECONDS)
    assert not asleep.is_alive()
    consumer.close()


def test_acks_a_lost_connection_kept_go_out_with_the_restarted_consumer(
    broker: CrunchRedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = broker.consume(QUEUE_NAME, prefetch=1, timeout=NEVER_MS)
    queue = DramatiqJobQueue(broker)
    queue.send(uuid.uuid4())
    queue.send(uuid.uuid4())
    first = next_message(consumer)
    consumer.ack(first)
    real = broker.dispatch_many

    def lost(*_args: object) -> list[object]:
        raise redis.ConnectionError("connection lost")

    monkeypatch.setattr(broker, "dispatch_many", lost)
    with pytest.raises(dramatiq.ConnectionClosed):
        next(consumer)
    with pytest.raises(dramatiq.ConnectionClosed):
        consumer.close()  # Dramatiq's consumer thread closes it, then starts another
    assert redis_id(first) in unacknowledged(broker)
    monkeypatch.setattr(broker, "dispatch_many", real)
    restarted = broker.consume(QUEUE_NAME, prefetch=1, timeout=NEVER_MS)
    second = next_message(restarted)
    assert unacknowledged(broker) == {redis_id(second)}
    restarted.ack(second)
    restarted.close()
    assert unacknowledged(broker) == set()


def test_a_busy_consumer_sends_acks_that_free_none_of_its_slots(
    broker: CrunchRedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a restart, the messages the consumer before had handed out are acked through
    the new one, which they free no slot of: busy with its own, it still sends them."""
    # A busy consumer's wait is bounded by its heartbeat: short here, so that each call
    # returns (the old code sent nothing but the heartbeat's command while busy).
    monkeypatch.setattr(broker_module, "BUSY_HEARTBEAT_SECONDS", 0.2)
    queue = DramatiqJobQueue(broker)
    queue.send(uuid.uuid4())
    queue.send(uuid.uuid4())
    before = broker.consume(QUEUE_NAME, prefetch=1, timeout=NEVER_MS)
    old = next_message(before)  # still being worked on when its consumer is replaced
    restarted = broker.consume(QUEUE_NAME, prefetch=1, timeout=NEVER_MS)
    own = next_message(restarted)  # its one slot, taken
    restarted.ack(old)  # the worker thread, done with the old one
    assert redis_id(old) in unacknowledged(broker)
    assert next(restarted) is None  # still busy with its own; sends the ack
    assert unacknowledged(broker) == {redis_id(own)}
    restarted.ack(own)
    restarted.close()


def test_closing_on_a_redis_timeout_is_a_connection_error_for_dramatiq(
    broker: CrunchRedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dramatiq's consumer thread (and its worker's shutdown) only expects a connection
    error from close: anything else would end the thread. The acks stay kept."""
    consumer = broker.consume(QUEUE_NAME, prefetch=1, timeout=NEVER_MS)
    DramatiqJobQueue(broker).send(uuid.uuid4())
    message = next_message(consumer)
    consumer.ack(message)

    def timed_out(*_args: object) -> list[object]:
        raise redis.TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(broker, "dispatch_many", timed_out)
    with pytest.raises(dramatiq.ConnectionClosed):
        consumer.close()
    assert broker.pending_acks(QUEUE_NAME).take() == [redis_id(message)]


def test_every_enqueue_wakes_an_idle_consumer_not_only_ours(broker: CrunchRedisBroker) -> None:
    # Dramatiq enqueues by itself too (a retry, a delayed message coming due): those
    # messages must wake an idle consumer as ours do.
    consumer = broker.consume(QUEUE_NAME, prefetch=1, timeout=NEVER_MS)
    key = queue_wakeup_key(QUEUE_NAME)
    message: dramatiq.Message[None] = dramatiq.Message(
        queue_name=QUEUE_NAME, actor_name=ACTOR_NAME, args=("x",), kwargs={}, options={}
    )

    async def scenario() -> object:
        idle = asyncio.create_task(asyncio.to_thread(next, consumer))
        # Wait until it is actually blocked on the wake-up list (Redis says so).
        deadline = time.monotonic() + DEADLINE_SECONDS
        while blocked_consumers(broker) < 1:
            assert time.monotonic() < deadline, "the consumer never blocked"
            await asyncio.sleep(0.01)
        broker.enqueue(message)
        assert await asyncio.wait_for(idle, DEADLINE_SECONDS) is None  # woken
        return await asyncio.to_thread(next, consumer)

    fetched = asyncio.run(scenario())
    assert fetched is not None and fetched.message_id == message.message_id
    assert broker.client.llen(key) == 0  # the one push was the one pop
    consumer.ack(fetched)
    consumer.close()


def test_a_retried_job_runs_again_without_waiting_for_any_fallback_timeout(
    broker: CrunchRedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The whole Dramatiq path of a retry: the actor asks for one 50 ms later, the
    # message goes to the delay queue, its consumer holds it until due and re-enqueues
    # it on the main queue, whose idle consumer must run it. Every consumer's fall-back
    # timeout is ten minutes: each of those steps has to be woken.
    runs: list[float] = []
    second_run = threading.Event()

    @dramatiq.actor(actor_name="test.retry_once", queue_name=QUEUE_NAME, broker=broker)
    def retry_once() -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise dramatiq.Retry("once more", delay=50)
        second_run.set()

    # The consumers' fall-back is ten minutes; the worker threads keep a short poll so
    # the worker stops quickly.
    consume = broker.consume
    monkeypatch.setattr(
        broker,
        "consume",
        lambda queue_name, prefetch=1, timeout=0: consume(queue_name, prefetch, NEVER_MS),
    )
    worker = Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        # Both consumers (queue and delay queue) idle on their wake-up lists first.
        while blocked_consumers(broker) < 2:
            assert time.monotonic() < deadline, "the consumers never went idle"
            time.sleep(0.01)
        retry_once.send()
        assert second_run.wait(DEADLINE_SECONDS), f"ran {len(runs)} time(s): a wake-up was lost"
        assert runs[1] - runs[0] >= 0.05  # and not before the delay asked for
    finally:
        for consumer in worker.consumers.values():
            consumer.stop()
        for queue_name in worker.consumers:
            broker.wake(queue_name)  # out of their ten-minute block, to see the stop
        worker.stop(timeout=10_000)


async def test_sweep_resends_a_queued_calculation_whose_message_was_lost(
    database_url: str, redis_url: str, broker: CrunchRedisBroker
) -> None:
    from datetime import UTC, datetime, timedelta

    from crunchql.core.settings import Settings
    from crunchql.workers.lifecycle import QUEUED_RESEND_AFTER, WorkerRuntime

    settings = Settings(_env_file=None, database_url=database_url, redis_url=redis_url)  # type: ignore[call-arg]
    runtime = await WorkerRuntime.create(settings, broker)
    try:
        async with unit_of_work(runtime.services.session_factory) as session:
            user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
            session.add(user)
            await session.flush()
            old = Calculation(
                owner_id=user.id, kind="monteCarloPi", input={"samples": 10, "seed": 1},
                created_at=datetime.now(UTC) - QUEUED_RESEND_AFTER - timedelta(seconds=5),
            )  # fmt: skip
            fresh = Calculation(owner_id=user.id, kind="monteCarloPi", input={"samples": 10})
            orphan = Calculation(
                owner_id=user.id, kind="monteCarloPi", input={"samples": 10, "seed": 1},
                status="RUNNING", worker_id="dead", attempts=1,
                heartbeat_at=datetime.now(UTC) - timedelta(minutes=5),
            )  # fmt: skip
            session.add_all([old, fresh, orphan])
            ended = AuthSession(user_id=user.id, expires_at=datetime.now(UTC) - timedelta(days=2))
            session.add(ended)
            await session.flush()
            stale_token = RefreshToken(
                user_id=user.id, family_id=ended.id, token_hash="f" * 64,
                expires_at=datetime.now(UTC) - timedelta(days=2),
            )  # fmt: skip
            session.add(stale_token)
            # Retention (CRUNCHQL_AUDIT_RETENTION_DAYS, 365 by default).
            too_old = AuditEvent(
                action="LOGIN_FAILED", at=datetime.now(UTC) - timedelta(days=366), details={}
            )
            recent = AuditEvent(
                action="LOGIN_FAILED", at=datetime.now(UTC) - timedelta(days=364), details={}
            )
            session.add_all([too_old, recent])
        # No message exists for any (as after a Redis restart): the old one is re-sent,
        # the fresh one is left to its own message, the orphaned run is handed back.
        assert broker.do_qsize(QUEUE_NAME) == 0
        assert await runtime.sweep_once() == 2
        assert broker.do_qsize(QUEUE_NAME) == 2
        async with unit_of_work(runtime.services.session_factory) as session:
            reloaded = await session.get(Calculation, orphan.id)
            assert reloaded is not None and reloaded.status == "QUEUED"
            # Long-expired refresh tokens and sessions are purged on the way, and audit
            # events past the retention period.
            assert await session.get(RefreshToken, stale_token.id) is None
            assert await session.get(AuthSession, ended.id) is None
            assert await session.get(AuditEvent, too_old.id) is None
            assert await session.get(AuditEvent, recent.id) is not None
        # With messages waiting, nothing is guessed at, and the released run is not
        # re-sent again by the next sweep.
        assert await runtime.sweep_once() == 0
    finally:
        await runtime.close()


def test_the_worker_s_event_loop_is_uvloop_and_runs_its_coroutines() -> None:
    """The worker's claims, finishes, events and wake-ups run on Dramatiq's event loop
    thread; it is uvloop's loop (installed with uvicorn[standard]), as the API's is."""
    import logging

    import uvloop

    thread = broker_module._DaemonEventLoopThread(logging.getLogger("test"))
    thread.start(timeout=5.0)
    try:

        async def probe() -> tuple[type, int]:
            loop = asyncio.get_running_loop()
            # A thread hop and back, as a kernel's run takes.
            answer = await loop.run_in_executor(None, sum, [20, 22])
            return type(loop), answer

        loop_type, answer = thread.run_coroutine(probe())
    finally:
        thread.stop()
    assert issubclass(loop_type, uvloop.Loop) and answer == 42
    assert thread.daemon and not thread.is_alive()
