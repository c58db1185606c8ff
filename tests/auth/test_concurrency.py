"""Slots (open sockets, subscriptions per user): one process, and several sharing Redis."""

from __future__ import annotations

import asyncio

import pytest

from crunchql.auth import concurrency
from crunchql.auth.concurrency import SlotLimiter
from crunchql.pubsub.redis_client import create_redis
from tests.conftest import flush_redis, wait_for


async def test_one_process_counts_and_frees() -> None:
    slots = SlotLimiter()
    held = [await slots.acquire("subs:u", 2) for _ in range(2)]
    assert all(held)
    assert await slots.acquire("subs:u", 2) is None
    assert await slots.acquire("subs:other", 2) is not None  # per key
    assert held[0] is not None
    await slots.release(held[0])
    assert await slots.acquire("subs:u", 2) is not None


async def test_processes_share_the_count_through_redis(redis_url: str) -> None:
    await flush_redis(redis_url)
    first_redis, second_redis = create_redis(redis_url), create_redis(redis_url)
    first, second = SlotLimiter(first_redis), SlotLimiter(second_redis)
    try:
        results = await asyncio.gather(
            *(limiter.acquire("subs:u", 3) for limiter in (first, second) * 4)
        )
        assert sum(slot is not None for slot in results) == 3
        taken = next(slot for slot in results if slot is not None)
        owner = first if taken.member in first._held.get("subs:u", set()) else second
        await owner.release(taken)
        assert await second.acquire("subs:u", 3) is not None
        assert await first.acquire("subs:u", 3) is None
    finally:
        for limiter in (first, second):
            await limiter.close()
        await first_redis.aclose()
        await second_redis.aclose()
        await flush_redis(redis_url)


async def test_slots_of_a_dead_process_expire(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await flush_redis(redis_url)
    monkeypatch.setattr(concurrency, "LEASE_SECONDS", 2.0)
    dead_redis, live_redis = create_redis(redis_url), create_redis(redis_url)
    dead, live = SlotLimiter(dead_redis), SlotLimiter(live_redis)
    try:
        assert await dead.acquire("sockets:u", 1) is not None
        await dead.close()  # the process is gone: nobody renews its lease
        assert await live.acquire("sockets:u", 1) is None

        async def free_again() -> bool:
            return await live.acquire("sockets:u", 1) is not None

        await wait_for(free_again, timeout=15, interval=0.1)
        # A live holder renews its lease and keeps its slot past the lease time.
        await asyncio.sleep(3.0)
        assert await SlotLimiter(dead_redis).acquire("sockets:u", 1) is None
    finally:
        await live.close()
        await dead_redis.aclose()
        await live_redis.aclose()
        await flush_redis(redis_url)


async def test_redis_down_falls_back_to_this_process() -> None:
    redis = create_redis("redis://127.0.0.1:1/0")  # nothing listens there
    slots = SlotLimiter(redis)
    assert await slots.acquire("subs:u", 1) is not None
    assert await slots.acquire("subs:u", 1) is None  # still capped in this process
    await slots.close()
    await redis.aclose()


async def test_releases_made_together_share_one_round_trip(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of subscriptions ending together (their calculations finished) free
    their slots in one Redis command per key, and each release still returns only once
    its slot is gone from the shared count."""
    await flush_redis(redis_url)
    redis = create_redis(redis_url)
    slots = SlotLimiter(redis)
    try:
        held = [await slots.acquire("subs:u", 100) for _ in range(50)]
        other = await slots.acquire("subs:v", 100)
        assert all(held) and other is not None
        assert await redis.zcard(slots.prefix + "subs:u") == 50
        round_trips = 0
        pipeline = redis.pipeline

        def counting(*args: object, **kwargs: object) -> object:
            nonlocal round_trips
            round_trips += 1
            return pipeline(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(redis, "pipeline", counting)
        await asyncio.gather(*(slots.release(slot) for slot in [*held, other] if slot))
        assert round_trips == 1
        assert await redis.zcard(slots.prefix + "subs:u") == 0
        assert await redis.zcard(slots.prefix + "subs:v") == 0
        assert slots.held("subs:u") == 0
        # A later release makes its own round trip.
        again = await slots.acquire("subs:u", 100)
        assert again is not None
        await slots.release(again)
        assert round_trips == 2 and await redis.zcard(slots.prefix + "subs:u") == 0
    finally:
        await slots.close()
        await redis.aclose()
        await flush_redis(redis_url)
