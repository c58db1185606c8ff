"""Caps on things a user holds open at once (WebSockets, subscriptions), counted in
this process and, with Redis, across every API process.

In Redis a holder is a member of a sorted set scored by its lease's end; the process
renews the leases of what it holds every ``LEASE_SECONDS / 3``, so the slots of a
process that died free themselves within ``LEASE_SECONDS``. When Redis cannot be
reached, only this process's own count applies (and the log says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger("crunchql.rate_limit")

LEASE_SECONDS = 60.0

# KEYS: the holders' set. ARGV: now, lease end, limit, member. 1 when admitted.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(ARGV[2]) * 1000))
return 1
"""


@dataclass(frozen=True)
class Slot:
    key: str
    member: str


class SlotLimiter:
    """``acquire`` a slot under ``limit`` for ``key`` or get None; ``release`` it."""

    def __init__(self, redis: Redis | None = None, prefix: str = "crunchql:slots:") -> None:
        self.redis = redis
        self.prefix = prefix
        self._held: dict[str, set[str]] = {}
        self._acquire = redis.register_script(_ACQUIRE) if redis is not None else None
        self._renewer: asyncio.Task[None] | None = None
        # Releases waiting for the next round trip: key -> members, and its outcome.
        self._forgetting: tuple[dict[str, list[str]], asyncio.Future[None]] | None = None
        self._forgetters: set[asyncio.Task[None]] = set()  # the loop keeps weak references

    def held(self, key: str) -> int:
        return len(self._held.get(key, ()))

    async def acquire(self, key: str, limit: int) -> Slot | None:
        if self.held(key) >= limit:
            return None
        member = uuid.uuid4().hex
        if self._acquire is not None:
            now = time.time()
            try:
                admitted = await self._acquire(
                    keys=[self.prefix + key], args=[now, now + LEASE_SECONDS, limit, member]
                )
            except (RedisError, OSError) as error:
                logger.warning("shared slot count unavailable (%s)", type(error).__name__)
            else:
                if not admitted:
                    return None
            self._ensure_renewer()
        # Counted here only after Redis answered: no await between this check and this
        # add, so parallel acquires in this process cannot both pass a full count.
        if self.held(key) >= limit:
            await self._forget_remote(key, member)
            return None
        self._held.setdefault(key, set()).add(member)
        return Slot(key, member)

    async def release(self, slot: Slot) -> None:
        await asyncio.shield(self._release(slot))  # a cancelled caller still frees it

    @asynccontextmanager
    async def holding(self, slot: Slot) -> AsyncIterator[Slot]:
        try:
            yield slot
        finally:
            await asyncio.shield(self._release(slot))

    def _release(self, slot: Slot) -> asyncio.Future[None]:
        """Frees the slot here at once; the future is done once Redis forgot it too."""
        members = self._held.get(slot.key)
        if members is not None:
            members.discard(slot.member)
            if not members:
                del self._held[slot.key]
        return self._forget(slot.key, slot.member)

    async def _forget_remote(self, key: str, member: str) -> None:
        await asyncio.shield(self._forget(key, member))

    def _forget(self, key: str, member: str) -> asyncio.Future[None]:
        """Removes the member from Redis; the future is done once it is removed (or Redis
        failed: then its lease runs out by itself). Releases made in the same turn of the
        event loop share one round trip, one ZREM per key: when thousands of
        subscriptions end together (their calculations finished), that is one command,
        not thousands, and no task per release."""
        if self.redis is None:
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        if self._forgetting is None:
            self._forgetting = ({}, asyncio.get_running_loop().create_future())
            task = asyncio.create_task(self._forget_batch(), name="crunchql-slot-release")
            self._forgetters.add(task)
            task.add_done_callback(self._forgetters.discard)
        members, done = self._forgetting
        members.setdefault(key, []).append(member)
        return done

    async def _forget_batch(self) -> None:
        # Runs in the loop's next turn: every release of this one has joined the batch.
        assert self._forgetting is not None and self.redis is not None
        members, done = self._forgetting
        self._forgetting = None  # later releases start the next batch
        try:
            with contextlib.suppress(RedisError, OSError):  # else the leases run out
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key, names in members.items():
                        pipe.zrem(self.prefix + key, *names)
                    await pipe.execute()
        finally:
            if not done.done():
                done.set_result(None)

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew(), name="crunchql-slot-leases")

    async def renew_once(self) -> None:
        if self.redis is None or not self._held:
            return
        lease_end = time.time() + LEASE_SECONDS
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, members in self._held.items():
                pipe.zadd(self.prefix + key, dict.fromkeys(members, lease_end), xx=True)
                pipe.pexpireat(self.prefix + key, int(lease_end * 1000))
            await pipe.execute()

    async def _renew(self) -> None:
        while self._held:
            await asyncio.sleep(LEASE_SECONDS / 3)
            try:
                await self.renew_once()
            except (RedisError, OSError) as error:
                logger.warning("could not renew slot leases: %s", type(error).__name__)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
