"""Fixed-window counters: in Redis when configured (shared by every process), else in memory.

``hit`` counts an attempt and refuses past the limit (floods per client address).
``check`` refuses once the limit is reached without counting, and ``record`` counts
without refusing: together they limit only what failed (wrong passwords per account),
so a client that logs in correctly and often is never locked out.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from crunchql.core.errors import RateLimitedError

logger = logging.getLogger("crunchql.rate_limit")


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int, window_seconds: int) -> None:
        """Count one attempt; raise RateLimitedError past ``limit`` in the window."""
        ...

    async def check(self, key: str, limit: int, window_seconds: int) -> None:
        """Raise RateLimitedError when ``limit`` attempts were already counted."""
        ...

    async def record(self, key: str, window_seconds: int) -> None:
        """Count one attempt, refusing nothing."""
        ...


def _refuse(window_seconds: int, now: float) -> RateLimitedError:
    retry_after = window_seconds - (now % window_seconds)
    return RateLimitedError(
        f"Too many attempts; try again in {int(retry_after) + 1} seconds.",
        retry_after=retry_after,
    )


class DisabledRateLimiter:
    async def hit(self, key: str, limit: int, window_seconds: int) -> None:
        return None

    async def check(self, key: str, limit: int, window_seconds: int) -> None:
        return None

    async def record(self, key: str, window_seconds: int) -> None:
        return None


class MemoryRateLimiter:
    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}

    def _slot(self, key: str, window_seconds: int) -> tuple[tuple[str, int], float]:
        now = time.time()
        window = int(now // window_seconds)
        if len(self._counts) > 100_000:  # drop old windows; bounded memory under a flood
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
        return (key, window), now

    async def hit(self, key: str, limit: int, window_seconds: int) -> None:
        slot, now = self._slot(key, window_seconds)
        self._counts[slot] = self._counts.get(slot, 0) + 1
        if self._counts[slot] > limit:
            raise _refuse(window_seconds, now)

    async def check(self, key: str, limit: int, window_seconds: int) -> None:
        slot, now = self._slot(key, window_seconds)
        if self._counts.get(slot, 0) >= limit:
            raise _refuse(window_seconds, now)

    async def record(self, key: str, window_seconds: int) -> None:
        slot, _ = self._slot(key, window_seconds)
        self._counts[slot] = self._counts.get(slot, 0) + 1


class RedisRateLimiter:
    """Shared by every API process. When Redis cannot be reached it lets requests
    through (and logs it): a lost counter must not take logins down with it."""

    def __init__(self, redis: Redis, prefix: str = "crunchql:rl:") -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, key: str, window_seconds: int) -> tuple[str, float]:
        now = time.time()
        return f"{self.prefix}{key}:{int(now // window_seconds)}", now

    async def _incr(self, key: str, window_seconds: int) -> tuple[int, float]:
        redis_key, now = self._key(key, window_seconds)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(redis_key)
                pipe.expire(redis_key, window_seconds + 1)
                count, _ = await pipe.execute()
        except (RedisError, OSError) as error:
            logger.warning("rate limit not applied, Redis unavailable: %s", type(error).__name__)
            return 0, now
        return int(count), now

    async def hit(self, key: str, limit: int, window_seconds: int) -> None:
        count, now = await self._incr(key, window_seconds)
        if count > limit:
            raise _refuse(window_seconds, now)

    async def check(self, key: str, limit: int, window_seconds: int) -> None:
        redis_key, now = self._key(key, window_seconds)
        try:
            count = int(await self.redis.get(redis_key) or 0)
        except (RedisError, OSError) as error:
            logger.warning("rate limit not applied, Redis unavailable: %s", type(error).__name__)
            return
        if count >= limit:
            raise _refuse(window_seconds, now)

    async def record(self, key: str, window_seconds: int) -> None:
        await self._incr(key, window_seconds)
