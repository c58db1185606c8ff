"""The event bus that carries calculation updates from runners to subscriptions.

What travels is a :class:`~crunchql.core.lifecycle.CalculationEvent` (its ``encode``d
form over Redis), delivered to the subscribers of its calculation id and, when it names
its owner, to the subscribers of that owner's key (:func:`user_events_key`, the list
views' ``myCalculationUpdates``): two lookups, whatever the number of users connected.
A subscriber may
also receive :data:`RESYNC`: something may have been missed (the Redis connection
dropped, or the subscriber fell behind) and it must re-read the state.

``RedisEventBus`` holds ONE pub/sub connection per process for all subscribers.
``InProcessEventBus`` serves the embedded mode with the same interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, Literal, Protocol

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from crunchql.core.lifecycle import CalculationEvent, MalformedEventError
from crunchql.pubsub.channels import CALCULATION_EVENTS, user_events_key

logger = logging.getLogger(__name__)


class Signal(enum.Enum):
    RESYNC = "resync"


# Delivered instead of events that may have been lost: re-read the state.
RESYNC: Final = Signal.RESYNC
Delivery = CalculationEvent | Literal[Signal.RESYNC]
SUBSCRIBER_QUEUE_SIZE = 64
# A calculation's id, or a user's events key (user_events_key).
Key = uuid.UUID | str
MALFORMED_RESYNC_SECONDS = 5.0


class Subscription:
    """One subscriber's mailbox. Bounded: when it overflows, the backlog is replaced
    by a single resync marker (the reader re-reads the state instead)."""

    def __init__(self, key: Key) -> None:
        self.key = key
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(SUBSCRIBER_QUEUE_SIZE)

    def deliver(self, event: Delivery) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(RESYNC)

    async def get(self, timeout: float | None = None) -> Delivery | None:
        """The next event, or None after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None


class EventBus(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, event: CalculationEvent) -> None: ...

    def subscribe(self, key: Key) -> contextlib.AbstractAsyncContextManager[Subscription]: ...

    @property
    def subscriber_count(self) -> int: ...


class _FanOut:
    def __init__(self) -> None:
        self._subscribers: dict[Key, set[Subscription]] = {}

    @property
    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values())

    def dispatch(self, event: CalculationEvent) -> None:
        for subscription in tuple(self._subscribers.get(event.id, ())):
            subscription.deliver(event)
        if event.owner_id is not None:
            for subscription in tuple(self._subscribers.get(user_events_key(event.owner_id), ())):
                subscription.deliver(event)

    def resync_all(self) -> None:
        for subs in tuple(self._subscribers.values()):
            for subscription in tuple(subs):
                subscription.deliver(RESYNC)

    def resync(self, key: Key) -> None:
        for subscription in tuple(self._subscribers.get(key, ())):
            subscription.deliver(RESYNC)

    @asynccontextmanager
    async def subscribe(self, key: Key) -> AsyncIterator[Subscription]:
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
    """The embedded mode's bus: events are immutable, so subscribers share the object."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def publish(self, event: CalculationEvent) -> None:
        self.dispatch(event)


class RedisEventBus(_FanOut):
    """Publishes on one Redis channel and listens to it over one connection."""

    def __init__(self, redis: Redis, *, reconnect_max_delay: float = 2.0) -> None:
        super().__init__()
        self._malformed_resync_at = -MALFORMED_RESYNC_SECONDS
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

    async def publish(self, event: CalculationEvent) -> None:
        await self.redis.publish(CALCULATION_EVENTS, event.encode())

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
        # Every API process hears every calculation's events: decode only those that
        # someone here watches.
        key = CalculationEvent.peek_id(data)
        if key is not None and key not in self._subscribers:
            owner = CalculationEvent.peek_owner(data)
            if owner is None or user_events_key(owner) not in self._subscribers:
                return
        try:
            event = CalculationEvent.decode(data)
        except MalformedEventError as error:
            logger.warning("dropped a malformed event bus message: %s", error)
            # Subscriptions do not poll: what the dropped message said (another
            # version's format during a roll) is read from the database instead, for
            # everyone at most every MALFORMED_RESYNC_SECONDS when it names no one.
            if key is not None:
                self.resync(key)
                owner = CalculationEvent.peek_owner(data)
                if owner is not None:
                    self.resync(user_events_key(owner))
            elif time.monotonic() - self._malformed_resync_at >= MALFORMED_RESYNC_SECONDS:
                self._malformed_resync_at = time.monotonic()
                self.resync_all()
            return
        self.dispatch(event)
