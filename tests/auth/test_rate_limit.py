from __future__ import annotations

import pytest

from crunchql.auth.rate_limit import MemoryRateLimiter, RedisRateLimiter
from crunchql.core.errors import RateLimitedError
from crunchql.pubsub.redis_client import create_redis


async def test_memory_limiter_counts_hits_and_failures_separately() -> None:
    limiter = MemoryRateLimiter()
    for _ in range(3):
        await limiter.hit("a", 3, 60)
    with pytest.raises(RateLimitedError):
        await limiter.hit("a", 3, 60)
    await limiter.check("b", 2, 60)  # checking counts nothing
    await limiter.record("b", 60)
    await limiter.record("b", 60)
    with pytest.raises(RateLimitedError):
        await limiter.check("b", 2, 60)


async def test_redis_limiter_lets_requests_through_when_redis_is_down() -> None:
    redis = create_redis("redis://127.0.0.1:1/0")  # nothing listens there
    limiter = RedisRateLimiter(redis)
    for _ in range(2):  # over the limit of 1, yet never refused
        await limiter.hit("login:addr:x", 1, 60)
        await limiter.check("login:acct:x", 1, 60)
        await limiter.record("login:acct:x", 60)
    await redis.aclose()
