from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from crunchql.core.lifecycle import CalculationEvent, CalculationSnapshot, CalculationStatus
from crunchql.pubsub.bus import RESYNC, SUBSCRIBER_QUEUE_SIZE, InProcessEventBus, RedisEventBus
from crunchql.pubsub.channels import CALCULATION_EVENTS, user_events_key
from crunchql.pubsub.redis_client import create_redis

A, B = uuid.uuid4(), uuid.uuid4()


def tick(calculation_id: uuid.UUID, n: int = 1) -> CalculationEvent:
    return CalculationEvent.progress_tick(
        calculation_id, attempt=1, version=n, progress=0.5, partial_result={"n": n}
    )


async def test_in_process_delivers_by_key_and_releases_on_exit() -> None:
    bus = InProcessEventBus()
    async with bus.subscribe(A) as a, bus.subscribe(B) as b:
        assert bus.subscriber_count == 2
        await bus.publish(tick(A))
        assert await a.get(timeout=1) == tick(A)
        assert await b.get(timeout=0.05) is None
    assert bus.subscriber_count == 0


def status(calculation_id: uuid.UUID, status: CalculationStatus, version: int) -> CalculationEvent:
    snapshot = CalculationSnapshot(
        id=calculation_id, owner_id=uuid.uuid4(), kind="monteCarloPi", input={"samples": 10},
        status=status, progress=1.0 if status.is_terminal else 0.0, version=version, attempts=1,
        created_at=datetime.now(UTC),
    )  # fmt: skip
    return CalculationEvent.status_change(snapshot)


async def test_a_slow_subscriber_gets_the_latest_progress_not_a_backlog() -> None:
    bus = InProcessEventBus()
    async with bus.subscribe(A) as a:
        for n in range(SUBSCRIBER_QUEUE_SIZE * 3):
            await bus.publish(tick(A, n))
        assert a.pending == 1
        assert await a.get(timeout=1) == tick(A, SUBSCRIBER_QUEUE_SIZE * 3 - 1)
        assert await a.get(timeout=0.01) is None


async def test_a_stale_tick_does_not_replace_a_fresher_unread_one() -> None:
    bus = InProcessEventBus()
    fresh = CalculationEvent.progress_tick(
        A, attempt=1, version=5, progress=0.6, partial_result=None
    )
    stale = CalculationEvent.progress_tick(
        A, attempt=1, version=4, progress=0.3, partial_result=None
    )
    async with bus.subscribe(A) as a:
        await bus.publish(fresh)
        await bus.publish(stale)
        assert await a.get(timeout=1) == fresh
        assert a.pending == 0


async def test_status_changes_are_never_coalesced_away() -> None:
    bus = InProcessEventBus()
    running = status(A, CalculationStatus.RUNNING, 1)
    succeeded = status(A, CalculationStatus.SUCCEEDED, 9)
    async with bus.subscribe(A) as a:
        for event in (running, tick(A, 2), tick(A, 3), tick(A, 4), succeeded, tick(A, 10)):
            await bus.publish(event)
        received = [await a.get(timeout=1) for _ in range(a.pending)]
    # Ticks between two status changes collapse into the last; the status changes,
    # the terminal one included, all arrive, in order.
    assert received == [running, tick(A, 4), succeeded, tick(A, 10)]


async def test_a_backlog_of_status_changes_becomes_one_resync() -> None:
    bus = InProcessEventBus()
    async with bus.subscribe(A) as a:
        for n in range(SUBSCRIBER_QUEUE_SIZE + 10):
            await bus.publish(status(A, CalculationStatus.RUNNING, n))
        # The backlog went: the reader re-reads instead, then sees what came after.
        assert await a.get(timeout=1) is RESYNC
        assert a.pending == 9


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
    async with listener.subscribe(A) as first, listener.subscribe(A) as second:
        subscriptions = [listener.subscribe(uuid.uuid4()) for _ in range(200)]
        for subscription in subscriptions:
            await subscription.__aenter__()
        after = sum(1 for c in await admin.client_list() if int(c.get("sub", 0)) > 0)
        assert after == before  # 202 subscriptions, still the one connection from start()
        await publisher.publish(tick(A))
        # Decoded on arrival: the very event, typed, for each subscriber.
        assert await first.get(timeout=2) == tick(A)
        assert await second.get(timeout=2) == tick(A)
        for subscription in subscriptions:
            await subscription.__aexit__(None, None, None)
    assert listener.subscriber_count == 0
    await admin.aclose()


async def test_redis_bus_reconnects_and_asks_subscribers_to_resync(
    redis_buses: tuple[RedisEventBus, RedisEventBus], redis_url: str
) -> None:
    listener, publisher = redis_buses
    admin = Redis.from_url(redis_url)
    async with listener.subscribe(B) as subscription:
        assert await admin.client_kill_filter(_type="pubsub") >= 1
        # Whatever was published while it was away is gone: it says so.
        assert await subscription.get(timeout=10) == RESYNC
        assert listener.connected
        await publisher.publish(tick(B, 7))
        assert await subscription.get(timeout=5) == tick(B, 7)
    await admin.aclose()


async def test_redis_bus_drops_malformed_messages_and_keeps_listening(
    redis_buses: tuple[RedisEventBus, RedisEventBus], caplog: pytest.LogCaptureFixture
) -> None:
    listener, publisher = redis_buses
    async with listener.subscribe(A) as subscription:
        with caplog.at_level(logging.WARNING, logger="crunchql.pubsub.bus"):
            # Whatever else lands on the channel (a stray client, an old format).
            for junk in [b"\xff\xfe", "not json", '{"key": "x", "event": {}}', "[1, 2]"]:
                await publisher.redis.publish(CALCULATION_EVENTS, junk)
            await publisher.publish(tick(A, 3))
            # Subscriptions do not poll: they are told to re-read, once for the burst.
            assert await subscription.get(timeout=5) == RESYNC
            assert await subscription.get(timeout=5) == tick(A, 3)
        assert await subscription.get(timeout=0.05) is None
        dropped = [r for r in caplog.records if "malformed" in r.getMessage()]
        assert len(dropped) == 4


async def test_a_malformed_event_for_a_watched_calculation_resyncs_its_subscribers(
    redis_buses: tuple[RedisEventBus, RedisEventBus],
) -> None:
    listener, publisher = redis_buses
    async with listener.subscribe(A) as a, listener.subscribe(B) as b:
        good = tick(A, 1).encode()
        broken = good[: good.index(str(A)) + 40] + "}"  # its id readable, the rest not
        await publisher.redis.publish(CALCULATION_EVENTS, broken)
        assert await a.get(timeout=5) == RESYNC
        assert await b.get(timeout=0.1) is None


async def test_start_does_not_hang_when_redis_is_down() -> None:
    bus = RedisEventBus(create_redis("redis://127.0.0.1:1/0"))
    await asyncio.wait_for(bus.start(), 10)
    assert not bus.connected
    await bus.close()
    await bus.redis.aclose()


async def test_redis_bus_skips_events_nobody_here_watches(
    redis_buses: tuple[RedisEventBus, RedisEventBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    listener, publisher = redis_buses
    decoded: list[object] = []
    real = CalculationEvent.decode

    def counting(data: str | bytes) -> CalculationEvent:
        decoded.append(data)
        return real(data)

    monkeypatch.setattr(CalculationEvent, "decode", counting)
    async with listener.subscribe(A) as subscription:
        await publisher.publish(tick(B, 1))  # watched elsewhere, not in this process
        await publisher.publish(tick(A, 2))
        assert await subscription.get(timeout=5) == tick(A, 2)
    assert len(decoded) == 1


class RecordingListener:
    def __init__(self) -> None:
        self.received: asyncio.Queue[str | bytes] = asyncio.Queue()
        self.resyncs = 0

    def deliver(self, data: str | bytes) -> None:
        self.received.put_nowait(data)

    def resync(self) -> None:
        self.resyncs += 1


async def test_session_events_reach_every_process_over_the_same_connection(
    redis_buses: tuple[RedisEventBus, RedisEventBus], redis_url: str
) -> None:
    listener_bus, publisher = redis_buses
    listener = RecordingListener()
    listener_bus.add_session_listener(listener)
    await publisher.publish_session_event('{"sessions": []}')
    data = await asyncio.wait_for(listener.received.get(), 5)
    assert data in ('{"sessions": []}', b'{"sessions": []}')
    # Calculation subscribers are not bothered by it, and a dropped connection asks the
    # listener to re-read the truth too.
    admin = Redis.from_url(redis_url)
    async with listener_bus.subscribe(B) as subscription:
        assert await admin.client_kill_filter(_type="pubsub") >= 1
        assert await subscription.get(timeout=10) == RESYNC
    await admin.aclose()
    assert listener.resyncs >= 1
    listener_bus.remove_session_listener(listener)


async def test_an_owned_event_reaches_its_calculation_and_its_owner_only(
    redis_buses: tuple[RedisEventBus, RedisEventBus],
) -> None:
    listener, publisher = redis_buses
    alice, bob = uuid.uuid4(), uuid.uuid4()
    owned = CalculationEvent.progress_tick(
        A, attempt=1, version=1, progress=0.5, partial_result=None, owner_id=alice
    )
    for bus, sender in [(InProcessEventBus(), None), (listener, publisher)]:
        async with (
            bus.subscribe(user_events_key(alice)) as owner,
            bus.subscribe(user_events_key(bob)) as other,
        ):
            # Nobody here watches the calculation itself: the owner's key lets it in.
            await (sender or bus).publish(owned)
            assert await owner.get(timeout=2) == owned
            assert await other.get(timeout=0.1) is None
            async with bus.subscribe(A) as calculation:
                await (sender or bus).publish(owned)
                assert await calculation.get(timeout=2) == owned
                assert await owner.get(timeout=2) == owned
