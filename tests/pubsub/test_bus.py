from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from crunchql.pubsub.bus import RESYNC, SUBSCRIBER_QUEUE_SIZE, InProcessEventBus, RedisEventBus
from crunchql.pubsub.channels import user_events_key
from crunchql.pubsub.redis_client import create_redis


async def test_in_process_delivers_by_key_and_releases_on_exit() -> None:
    bus = InProcessEventBus()
    async with bus.subscribe("a") as a, bus.subscribe("b") as b:
        assert bus.subscriber_count == 2
        await bus.publish("a", {"n": 1})
        assert await a.get(timeout=1) == {"n": 1}
        assert await b.get(timeout=0.05) is None
    assert bus.subscriber_count == 0


async def test_a_slow_subscriber_gets_one_resync_instead_of_a_backlog() -> None:
    bus = InProcessEventBus()
    async with bus.subscribe("a") as a:
        for n in range(SUBSCRIBER_QUEUE_SIZE + 10):
            await bus.publish("a", {"n": n})
        first = await a.get(timeout=1)
        assert first == RESYNC or first == {"n": SUBSCRIBER_QUEUE_SIZE}
        assert RESYNC in [first, *[await a.get(timeout=0.1) for _ in range(10)]]


@pytest.fixture
async def redis_buses(redis_url: str) -> tuple[RedisEventBus, RedisEventBus]:
    listener, publisher = (
        RedisEventBus(create_redis(redis_url)),
        RedisEventBus(create_redis(redis_url)),
    )
    await listener.start()
    assert listener.connected
    yield listener, publisher  # type: ignore[misc]
    await listener.close()
    await listener.redis.aclose()
    await publisher.redis.aclose()


async def test_redis_bus_fans_out_over_one_connection(
    redis_buses: tuple[RedisEventBus, RedisEventBus], redis_url: str
) -> None:
    listener, publisher = redis_buses
    admin = Redis.from_url(redis_url)
    before = sum(1 for c in await admin.client_list() if int(c.get("sub", 0)) > 0)
    async with listener.subscribe("x") as first, listener.subscribe("x") as second:
        subscriptions = [listener.subscribe(f"k{n}") for n in range(200)]
        for subscription in subscriptions:
            await subscription.__aenter__()
        after = sum(1 for c in await admin.client_list() if int(c.get("sub", 0)) > 0)
        assert after == before  # 202 subscriptions, still the one connection from start()
        await publisher.publish("x", {"status": "RUNNING", "progress": 0.5})
        assert await first.get(timeout=2) == {"status": "RUNNING", "progress": 0.5}
        assert await second.get(timeout=2) == {"status": "RUNNING", "progress": 0.5}
        for subscription in subscriptions:
            await subscription.__aexit__(None, None, None)
    assert listener.subscriber_count == 0
    await admin.aclose()


async def test_redis_bus_reconnects_and_asks_subscribers_to_resync(
    redis_buses: tuple[RedisEventBus, RedisEventBus], redis_url: str
) -> None:
    listener, publisher = redis_buses
    admin = Redis.from_url(redis_url)
    async with listener.subscribe("y") as subscription:
        assert await admin.client_kill_filter(_type="pubsub") >= 1
        # Whatever was published while it was away is gone: it says so.
        assert await subscription.get(timeout=10) == RESYNC
        assert listener.connected
        await publisher.publish("y", {"after": True})
        assert await subscription.get(timeout=5) == {"after": True}
    await admin.aclose()


async def test_start_does_not_hang_when_redis_is_down() -> None:
    bus = RedisEventBus(create_redis("redis://127.0.0.1:1/0"))
    await asyncio.wait_for(bus.start(), 10)
    assert not bus.connected
    await bus.close()
    await bus.redis.aclose()


async def test_an_owned_event_reaches_its_calculation_and_its_owner_only(
    redis_buses: tuple[RedisEventBus, RedisEventBus],
) -> None:
    listener, publisher = redis_buses
    for bus, sender in [(InProcessEventBus(), None), (listener, publisher)]:
        async with (
            bus.subscribe("calc-1") as calculation,
            bus.subscribe(user_events_key("alice")) as alice,
            bus.subscribe(user_events_key("bob")) as bob,
        ):
            await (sender or bus).publish("calc-1", {"progress": 0.5}, owner="alice")
            assert await calculation.get(timeout=2) == {"progress": 0.5}
            assert await alice.get(timeout=2) == {"progress": 0.5}
            assert await bob.get(timeout=0.1) is None
