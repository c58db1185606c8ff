"""Automatic pipelining on real Redis: the commands of one event loop turn leave as one
pipeline, each caller gets its own replies in order, an error reply reaches only its
caller, a dead connection fails every caller of the batch, and a submit's job and its
"created" event (and other submits' of the same turn) share one round trip."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from crunchql.core.lifecycle import CalculationEvent, CalculationStatus
from crunchql.pubsub.autopipeline import AutoPipeline, autopipeline, raise_errors
from crunchql.pubsub.bus import RedisEventBus
from crunchql.pubsub.channels import CALCULATION_EVENTS
from crunchql.pubsub.redis_client import create_redis
from crunchql.workers.broker import QUEUE_NAME, create_broker
from crunchql.workers.queues import ACTOR_NAME, DramatiqJobQueue
from tests.pubsub.test_bus import status

pytestmark = pytest.mark.redis


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = create_redis(redis_url)
    yield client
    await client.aclose()


async def test_the_commands_of_one_turn_leave_as_one_pipeline_in_order(redis: Redis) -> None:
    key = f"crunchql-test:{uuid.uuid4().hex}"
    pipeline = AutoPipeline(redis)
    try:
        replies = await asyncio.gather(
            *(pipeline.execute(("INCR", key), ("GET", key)) for _ in range(10))
        )
        assert pipeline.round_trips == 1
        # Each caller has its own two replies, in the order the callers issued them.
        assert replies == [[n, str(n).encode()] for n in range(1, 11)]
        assert await pipeline.execute(("INCR", key)) == [11]  # a later turn: another one
        assert pipeline.round_trips == 2
    finally:
        await redis.delete(key)


async def test_an_error_reply_reaches_only_its_caller(redis: Redis) -> None:
    text_key, counter = f"crunchql-test:{uuid.uuid4().hex}", f"crunchql-test:{uuid.uuid4().hex}"
    await redis.set(text_key, "not a number")
    pipeline = AutoPipeline(redis)
    try:
        bad, good = await asyncio.gather(
            pipeline.execute(("INCR", text_key)), pipeline.execute(("INCR", counter))
        )
        assert pipeline.round_trips == 1
        assert isinstance(bad[0], ResponseError) and good == [1]
        with pytest.raises(ResponseError):
            raise_errors(bad)
        assert raise_errors(good) == [1]
    finally:
        await redis.delete(text_key, counter)


async def test_a_dead_connection_fails_every_caller_of_the_batch() -> None:
    client = create_redis("redis://127.0.0.1:1/0")  # nothing listens there
    pipeline = AutoPipeline(client)
    try:
        results = await asyncio.gather(
            *(pipeline.execute(("PING",)) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(each, RedisConnectionError) for each in results), results
    finally:
        await client.aclose()


async def test_a_caller_cancelled_before_the_flush_sends_nothing(redis: Redis) -> None:
    key = f"crunchql-test:{uuid.uuid4().hex}"
    pipeline = AutoPipeline(redis)
    try:
        cancelled = asyncio.ensure_future(pipeline.execute(("INCR", key)))
        await asyncio.sleep(0)  # it has issued its command; the flush has not run yet
        cancelled.cancel()
        assert await pipeline.execute(("EXISTS", key)) == [0]
        assert cancelled.cancelled()
    finally:
        await redis.delete(key)


async def test_submits_of_one_turn_send_their_jobs_and_events_in_one_round_trip(
    redis: Redis, redis_url: str
) -> None:
    """What ``services.calculations.submit`` does after its INSERT, for three submits
    that reach it in the same turn: one pipeline carries the three messages, their
    wake-ups and the three "created" events; every message is queued and every event
    published."""
    broker = create_broker(redis_url)
    broker.flush_all()
    queue, bus = DramatiqJobQueue(broker, redis=redis), RedisEventBus(redis)
    listener = redis.pubsub()
    ids = [uuid.uuid4() for _ in range(3)]
    try:
        await bus.start()
        await listener.subscribe(CALCULATION_EVENTS)
        await listener.get_message(timeout=1.0)  # the subscription's confirmation
        before = autopipeline(redis).round_trips
        events = [status(each, CalculationStatus.QUEUED, 0) for each in ids]
        await asyncio.gather(
            *(queue.enqueue(each) for each in ids), *(bus.publish(event) for event in events)
        )
        assert autopipeline(redis).round_trips == before + 1
        received = []
        async with asyncio.timeout(10):
            while len(received) < len(ids):
                message = await listener.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    received.append(CalculationEvent.decode(message["data"]).id)
        assert sorted(received) == sorted(ids)
        consumer = broker.consume(QUEUE_NAME, prefetch=3, timeout=1_000)
        fetched = [await asyncio.to_thread(next, consumer) for _ in ids]
        assert sorted(m.args[0] for m in fetched) == sorted(str(each) for each in ids)  # type: ignore[attr-defined]
        assert {m.actor_name for m in fetched} == {ACTOR_NAME}  # type: ignore[attr-defined]
        for message in fetched:
            consumer.ack(message)
        consumer.close()
    finally:
        await listener.aclose()
        await bus.close()
        broker.flush_all()
        broker.close()


async def test_the_registry_does_not_keep_a_client_alive(redis_url: str) -> None:
    """Each client's pipeline is found by the client; once the client is gone, so is
    the entry (a pipeline holding its client would have kept every client alive)."""
    import gc
    import weakref

    client = create_redis(redis_url)
    assert await autopipeline(client).execute(("PING",)) == [True]
    assert autopipeline(client) is autopipeline(client)
    await client.aclose()
    gone = weakref.ref(client)
    del client
    gc.collect()
    assert gone() is None
