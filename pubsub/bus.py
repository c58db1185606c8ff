"""The event bus that carries calculation updates from runners to subscriptions.

Events are small JSON objects: ``{"id": ..., "status": ..., "progress": ...,
"version": ..., "partialResult": ..., "terminal": bool}``. A subscriber may also
receive ``{"resync": true}``: something may have been missed (the Redis connection
dropped, or the subscriber fell behind) and it must re-read the state.

An event published with ``owner`` is also delivered to that user's key
(:func:`~crunchql.pubsub.channels.user_events_key`): one Redis message, two lookups, so
the cost of an event does not depend on how many users are connected.

``RedisEventBus`` holds ONE pub/sub connection per process for all subscribers.
``InProcessEventBus`` serves the embedded mode with the same interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from crunchql.pubsub.channels import CALCULATION_EVENTS, user_events_key

logger = logging.getLogger(__name__)

Event = dict[str, Any]
RESYNC: Event = {"resync": True}
SUBSCRIBER_QUEUE_SIZE = 64


class Subscription:
    """One subscriber's mailbox. Bounded: when it overflows, the backlog is replaced
    by a single resync marker (the reader re-reads the state instead)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._queue: asyncio.Queue[Event] = asyncio.Queue(SUBSCRIBER_QUEUE_SIZE)

    def deliver(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(RESYNC)

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None


class EventBus(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, key: str, event: Event, *, owner: str | None = None) -> None: ...

    def subscribe(self, key: str) -> contextlib.AbstractAsyncContextManager[Subscription]: ...

    @property
    def subscriber_count(self) -> int: ...


class _FanOut:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[Subscription]] = {}

    @property
    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values())

    def dispatch(self, key: str, event: Event, owner: str | None = None) -> None:
        for subscription in tuple(self._subscribers.get(key, ())):
            subscription.deliver(event)
        if owner is not None:
            for subscription in tuple(self._subscribers.get(user_events_key(owner), ())):
                subscription.deliver(event)

    def resync_all(self) -> None:
        for subs in tuple(self._subscribers.values()):
            for subscription in tuple(subs):
                subscription.deliver(RESYNC)

    @asynccontextmanager
    async def subscribe(self, key: str) -> AsyncIterator[Subscription]:
        subscription = Subscription(key)
        self._subscribers.setdefault(key, set()).add(subscription)
        try:
            yield subscription
        finally:
            subs = self._subscribers.get(key)
            if subs is not None:
                subs.discard(subscription)
                if not subs:
                    del self._subscribers[key]


class InProcessEventBus(_FanOut):
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def publish(self, key: str, event: Event, *, owner: str | None = None) -> None:
        self.dispatch(key, event, owner)


class RedisEventBus(_FanOut):
    """Publishes on one Redis channel and listens to it over one connection."""

    def __init__(self, redis: Redis, *, reconnect_max_delay: float = 2.0) -> None:
        super().__init__()
        self.redis = redis
        self.reconnect_max_delay = reconnect_max_delay
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.connected = False

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="crunchql-event-bus")
        # Serve once subscribed, so no early event is missed; a Redis that is down at
        # start must not stop the API from starting, so wait only briefly.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 5.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def publish(self, key: str, event: Event, *, owner: str | None = None) -> None:
        envelope: Event = {"key": key, "event": event}
        if owner is not None:
            envelope["owner"] = owner
        message = json.dumps(envelope, separators=(",", ":"))
        await self.redis.publish(CALCULATION_EVENTS, message)

    async def _listen(self) -> None:
        delay = 0.05
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(CALCULATION_EVENTS)
                # Wait for the confirmation, so "connected" means events now flow.
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
                    if message is not None and message["type"] == "subscribe":
                        break
                if not self.connected and self._ready.is_set():
                    logger.warning("event bus reconnected to Redis; resyncing subscribers")
                    # Anything published while we were away is lost: every
                    # subscriber re-reads the state it watches.
                    self.resync_all()
                self.connected = True
                self._ready.set()
                delay = 0.05
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is None:
                        continue
                    if message["type"] == "message":
                        self._on_message(message["data"])
                    elif message["type"] == "subscribe":
                        # redis-py reconnected under us and subscribed again: events
                        # published in between are lost, so subscribers re-read.
                        logger.warning("event bus reconnected to Redis; resyncing subscribers")
                        self.resync_all()
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError, RedisError) as error:
                if self.connected:
                    logger.warning("event bus lost its Redis connection: %s", error)
                self.connected = False
                self._ready.set()  # start() must not wait forever on a dead Redis
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max_delay)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)  # type: ignore[no-untyped-call]

    def _on_message(self, data: bytes | str) -> None:
        try:
            decoded = json.loads(data)
            owner = decoded.get("owner")
            self.dispatch(
                str(decoded["key"]), decoded["event"], str(owner) if owner is not None else None
            )
        except (ValueError, KeyError, TypeError):
            logger.warning("dropped a malformed event bus message")
