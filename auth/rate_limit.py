"""Fixed-window counters: in Redis when configured (shared by every process), else in memory."""

from __future__ import annotations

import time
from typing import Protocol

from redis.asyncio import Redis

from core.errors import RateLimitedError


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int, window_seconds: int) -> None:
        """Count one attempt; raise RateLimitedError past ``limit`` in the window."""
        ...


class DisabledRateLimiter:
    async def hit(self, key: str, limit: int, window_seconds: int) -> None:
        return None


def _refuse(window_seconds: int, now: float) -> RateLimitedError:
    retry_after = window_seconds - (now % window_seconds)
    return RateLimitedError(
        f"Too many attempts; try again in {int(retry_after) + 1} seconds.",
        retry_after=retry_after,
    )


class MemoryRateLimiter:
    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}

    async def hit(self, key: str, limit: int, window_seconds: int) -> None:
        now = time.time()
        window = int(now // window_seconds)
        if len(self._counts) > 100_000:  # drop old windows; bounded memory under a flood
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
        count = self._counts.get((key, window), 0) + 1
        self._counts[(key, window)] = count
        if count > limit:
            raise _refuse(window_seconds, now)


class RedisRateLimiter:
    def __init__(self, redis: Redis, prefix: str = "crunchql:rl:") -> None:
        self.redis = redis
        self.prefix = prefix

    async def hit(self, key: str, limit: int, window_seconds: int) -> None:
        now = time.time()
        window = int(now // window_seconds)
        redis_key = f"{self.prefix}{key}:{window}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(redis_key)
            pipe.expire(redis_key, window_seconds + 1)
            count, _ = await pipe.execute()
        if int(count) > limit:
            raise _refuse(window_seconds, now)
