"""Counters that refuse past a limit: in Redis when configured (shared by every
process), else in memory, with the same semantics.

``hit`` counts an attempt and refuses past the limit in ONE atomic step (a Lua script
in Redis, a plain read-modify-write without an ``await`` in memory): N parallel
attempts count N, so no burst slips between a check and a record. A window starts at
the first attempt and lasts ``window_seconds``.

``escalate=True`` turns crossing the limit into a lockout whose length doubles with
each repeated crossing (window, 2 x window, 4 x window, ... at most
``MAX_LOCKOUT_SECONDS``); the strikes are forgotten a day after the last one.

``refund`` gives one attempt back: a login counts as a failure before its password is
checked (bcrypt is slow, the count must not wait for it) and is refunded when the
password was right, so logging in correctly and often never locks anyone out.

Every ``hit`` also notes what it consumed (``Usage``) for the request being served, so
the HTTP edge can answer with ``RateLimit-Policy``/``RateLimit`` headers.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, cast

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from crunchql.core.errors import RateLimitedError
from crunchql.pubsub.autopipeline import autopipeline

logger = logging.getLogger("crunchql.rate_limit")

MAX_LOCKOUT_SECONDS = 24 * 3600
MAX_MEMORY_KEYS = 100_000


@dataclass(frozen=True)
class Usage:
    """What one counted attempt left of a limit: for the RateLimit headers."""

    policy: str
    limit: int
    window_seconds: int
    remaining: int
    reset_seconds: float


_consumed: ContextVar[list[Usage] | None] = ContextVar("crunchql_rate_limits", default=None)


@contextmanager
def tracking_usage() -> Iterator[list[Usage]]:
    """Collect the ``Usage`` of every limit hit while serving one request (tasks the
    request starts share the list)."""
    usages: list[Usage] = []
    token = _consumed.set(usages)
    try:
        yield usages
    finally:
        _consumed.reset(token)


def _note(usage: Usage) -> None:
    usages = _consumed.get()
    if usages is not None:
        usages.append(usage)


def _refuse(policy: str, limit: int, window_seconds: int, retry_after: float) -> RateLimitedError:
    _note(Usage(policy, limit, window_seconds, 0, retry_after))
    return RateLimitedError(
        f"Too many attempts; try again in {math.ceil(retry_after)} seconds.",
        retry_after=retry_after,
    )


class RateLimiter(Protocol):
    async def hit(
        self,
        key: str,
        limit: int,
        window_seconds: int,
        *,
        policy: str | None = None,
        escalate: bool = False,
    ) -> None:
        """Count one attempt; raise RateLimitedError past ``limit`` in the window."""
        ...

    async def refund(self, key: str) -> None:
        """Give back one attempt counted by ``hit`` (it turned out not to count)."""
        ...


class DisabledRateLimiter:
    async def hit(
        self,
        key: str,
        limit: int,
        window_seconds: int,
        *,
        policy: str | None = None,
        escalate: bool = False,
    ) -> None:
        return None

    async def refund(self, key: str) -> None:
        return None


class MemoryRateLimiter:
    """One process's counters (the embedded mode). No ``await`` between reading and
    writing a counter: on one event loop each ``hit`` is atomic."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (count, window end)
        self._locks: dict[str, float] = {}  # key -> lockout end
        self._strikes: dict[str, tuple[int, float]] = {}  # key -> (strikes, forgotten at)

    def _prune(self, now: float) -> None:
        if len(self._counts) + len(self._locks) + len(self._strikes) > MAX_MEMORY_KEYS:
            self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
            self._locks = {k: v for k, v in self._locks.items() if v > now}
            self._strikes = {k: v for k, v in self._strikes.items() if v[1] > now}

    async def hit(
        self,
        key: str,
        limit: int,
        window_seconds: int,
        *,
        policy: str | None = None,
        escalate: bool = False,
    ) -> None:
        now = self._clock()
        self._prune(now)
        name = policy or key.partition(":")[0]
        locked_until = self._locks.get(key, 0.0)
        if locked_until > now:
            raise _refuse(name, limit, window_seconds, locked_until - now)
        count, ends = self._counts.get(key, (0, 0.0))
        if ends <= now:
            count, ends = 0, now + window_seconds
        count += 1
        self._counts[key] = (count, ends)
        if count <= limit:
            _note(Usage(name, limit, window_seconds, limit - count, ends - now))
            return
        if not escalate:
            raise _refuse(name, limit, window_seconds, ends - now)
        strikes, forget_at = self._strikes.get(key, (0, 0.0))
        strikes = strikes + 1 if forget_at > now else 1
        self._strikes[key] = (strikes, now + MAX_LOCKOUT_SECONDS)
        lockout = min(window_seconds * 2 ** (strikes - 1), MAX_LOCKOUT_SECONDS)
        self._locks[key] = now + lockout
        del self._counts[key]
        raise _refuse(name, limit, window_seconds, lockout)

    async def refund(self, key: str) -> None:
        count, ends = self._counts.get(key, (0, 0.0))
        if count > 0:
            self._counts[key] = (count - 1, ends)


# KEYS: counter, lockout, strikes. ARGV: limit, window ms, escalate (0/1), max lockout ms.
# Returns {count, ms until the window ends} or {-1, ms until the refusal ends}.
_HIT_SCRIPT = """
local locked = redis.call('PTTL', KEYS[2])
if locked > 0 then return {-1, locked} end
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
if count <= tonumber(ARGV[1]) then return {count, ttl} end
if ARGV[3] ~= '1' then return {-1, ttl} end
local strikes = redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
local lockout = math.floor(math.min(tonumber(ARGV[2]) * 2 ^ (strikes - 1), tonumber(ARGV[4])))
redis.call('SET', KEYS[2], '1', 'PX', lockout)
redis.call('DEL', KEYS[1])
return {-1, lockout}
"""

_REFUND_SCRIPT = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count > 0 then redis.call('DECR', KEYS[1]) end
return count
"""


class RedisRateLimiter:
    """Shared by every API process. When Redis cannot be reached it lets requests
    through (and logs it): a lost counter must not take logins down with it."""

    def __init__(self, redis: Redis, prefix: str = "crunchql:rl:") -> None:
        self.redis = redis
        self.prefix = prefix
        self._hit = redis.register_script(_HIT_SCRIPT)
        self._refund = redis.register_script(_REFUND_SCRIPT)

    async def hit(
        self,
        key: str,
        limit: int,
        window_seconds: int,
        *,
        policy: str | None = None,
        escalate: bool = False,
    ) -> None:
        name = policy or key.partition(":")[0]
        base = self.prefix + key
        keys = [base, base + ":lock", base + ":strikes"]
        args = [limit, window_seconds * 1000, int(escalate), MAX_LOCKOUT_SECONDS * 1000]
        try:
            # With the other Redis commands of this turn (other requests' hits, jobs,
            # events): one round trip for all of them.
            (raw,) = await autopipeline(self.redis).execute(
                ("EVALSHA", self._hit.sha, len(keys), *keys, *args)
            )
            if isinstance(raw, NoScriptError):  # a restarted or flushed server
                raw = await self._hit(keys=keys, args=args)  # loads the script, runs it
            elif isinstance(raw, Exception):
                raise raw
        except (RedisError, OSError) as error:
            logger.warning("rate limit not applied, Redis unavailable: %s", type(error).__name__)
            return
        count, milliseconds = (int(each) for each in cast(list[Any], raw))
        if count < 0:
            raise _refuse(name, limit, window_seconds, milliseconds / 1000)
        _note(Usage(name, limit, window_seconds, limit - count, milliseconds / 1000))

    async def refund(self, key: str) -> None:
        try:
            await self._refund(keys=[self.prefix + key])
        except (RedisError, OSError) as error:
            logger.warning("rate limit refund lost, Redis unavailable: %s", type(error).__name__)
