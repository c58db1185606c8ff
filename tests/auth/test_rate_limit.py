from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from crunchql.auth.rate_limit import (
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    tracking_usage,
)
from crunchql.core.errors import RateLimitedError
from crunchql.pubsub.redis_client import create_redis
from tests.conftest import flush_redis


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter()
        return
    url: str = request.getfixturevalue("redis_url")
    await flush_redis(url)
    redis = create_redis(url)
    yield RedisRateLimiter(redis)
    await redis.aclose()
    await flush_redis(url)


async def _refusals(limiter: RateLimiter, key: str, attempts: int, limit: int) -> int:
    async def attempt() -> bool:
        try:
            await limiter.hit(key, limit, 60)
        except RateLimitedError:
            return True
        return False

    return sum(await asyncio.gather(*(attempt() for _ in range(attempts))))


async def test_parallel_hits_all_count(limiter: RateLimiter) -> None:
    """The finding: check-then-record let 30 parallel attempts through a limit of 10."""
    assert await _refusals(limiter, "burst", 30, 10) == 20


async def test_refund_gives_one_attempt_back(limiter: RateLimiter) -> None:
    for _ in range(3):
        await limiter.hit("k", 3, 60)
    await limiter.refund("k")
    await limiter.hit("k", 3, 60)
    with pytest.raises(RateLimitedError):
        await limiter.hit("k", 3, 60)
    await limiter.refund("never-counted")  # nothing to give back: no error, no credit
    with pytest.raises(RateLimitedError):
        await limiter.hit("k", 3, 60)


async def test_refusals_carry_retry_after_and_usage_is_tracked(limiter: RateLimiter) -> None:
    with tracking_usage() as usages:
        await limiter.hit("u", 2, 60, policy="demo")
        await limiter.hit("u", 2, 60, policy="demo")
        with pytest.raises(RateLimitedError) as refused:
            await limiter.hit("u", 2, 60, policy="demo")
    assert 0 < refused.value.extensions["retryAfter"] <= 60
    assert [(u.policy, u.limit, u.window_seconds, u.remaining) for u in usages] == [
        ("demo", 2, 60, 1),
        ("demo", 2, 60, 0),
        ("demo", 2, 60, 0),
    ]


async def test_escalating_lockout_doubles() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock=clock)
    retry_afters = []
    for _ in range(3):
        for _ in range(2):
            await limiter.hit("guess", 2, 60, escalate=True)
        with pytest.raises(RateLimitedError) as refused:
            await limiter.hit("guess", 2, 60, escalate=True)
        retry_afters.append(refused.value.extensions["retryAfter"])
        with pytest.raises(RateLimitedError):  # still locked a moment later
            await limiter.hit("guess", 2, 60, escalate=True)
        clock.now += retry_afters[-1] + 0.1
    assert retry_afters == [60, 120, 240]


async def test_escalating_lockout_doubles_in_redis(redis_url: str) -> None:
    await flush_redis(redis_url)
    redis = create_redis(redis_url)
    limiter = RedisRateLimiter(redis)
    try:
        retry_afters = []
        for _ in range(2):
            await limiter.hit("guess", 1, 60, escalate=True)
            with pytest.raises(RateLimitedError) as refused:
                await limiter.hit("guess", 1, 60, escalate=True)
            retry_afters.append(refused.value.extensions["retryAfter"])
            await redis.delete("crunchql:rl:guess:lock")  # as if the lockout had passed
        assert retry_afters == [60, 120]
    finally:
        await redis.aclose()
        await flush_redis(redis_url)


async def test_redis_limiter_lets_requests_through_when_redis_is_down() -> None:
    redis = create_redis("redis://127.0.0.1:1/0")  # nothing listens there
    limiter = RedisRateLimiter(redis)
    for _ in range(2):  # over the limit of 1, yet never refused
        await limiter.hit("login:addr:x", 1, 60)
        await limiter.refund("login:addr:x")
    await redis.aclose()


async def test_redis_limiter_counts_on_a_server_that_lost_its_scripts(redis_url: str) -> None:
    """Hits go out with the turn's other commands by the script's digest; a server that
    no longer knows the script (restarted, SCRIPT FLUSH) gets it loaded, and counts."""
    await flush_redis(redis_url)
    redis = create_redis(redis_url)
    limiter = RedisRateLimiter(redis)
    try:
        await redis.script_flush()
        assert await _refusals(limiter, "flushed", 5, 3) == 2
        await redis.script_flush()
        with pytest.raises(RateLimitedError):
            await limiter.hit("flushed", 3, 60)
    finally:
        await redis.aclose()
        await flush_redis(redis_url)
