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

The same connection carries session events (revocations, account changes: see
``services/revocation.py``) on their own channel to process-wide ``SessionListener``s:
every API process hears each one, and a listener is told to resync like any
subscriber when events may have been lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, Literal, Protocol

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from crunchql.core.lifecycle import CalculationEvent, EventKind, MalformedEventError
from crunchql.pubsub.autopipeline import autopipeline, raise_errors
from crunchql.pubsub.channels import CALCULATION_EVENTS, SESSION_EVENTS, user_events_key

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


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Subscription:
    """One subscriber's mailbox.

    A reader slower than the event rate (a slow client holds its subscription's
    generator at the socket write) does not fall behind: a progress tick that arrives
    while the previous one is still unread replaces it (latest state wins; the reader's
    ``WatchState`` only ever moves forward anyway). Status changes, terminal ones
    included, are never replaced or dropped; only if that many of them piled up would
    the backlog be replaced by a single resync marker (the reader re-reads the state).
    """

    __slots__ = ("_items", "_waiter", "key")

    def __init__(self, key: Key) -> None:
        self.key = key
        self._items: deque[Delivery] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def deliver(self, event: Delivery) -> None:
        items = self._items
        if (
            items
            and event is not RESYNC
            and event.kind is EventKind.PROGRESS
            and (last := items[-1]) is not RESYNC
            and last.kind is EventKind.PROGRESS
            # A user's key carries every calculation of that user: only a tick of the
            # same calculation may stand in for another.
            and last.id == event.id
        ):
            # Keep the newer of the two (a lagging publisher's stale tick must not
            # replace a fresher one; the reader would drop it and show neither). The
            # reader is not waiting: there was something unread.
            if (event.attempt, event.progress) >= (last.attempt, last.progress):
                items[-1] = event
            return
        if len(items) >= SUBSCRIBER_QUEUE_SIZE:
            items.clear()
            items.append(RESYNC)
        else:
            items.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout: float | None = None) -> Delivery | None:
        """The next event, or None after ``timeout`` seconds."""
        if not self._items:
            # A bare future and a timer rather than asyncio.wait_for, which wraps the
            # wait in a second future and callbacks: this runs once per subscriber per
            # event, 10,000 times for one event of a widely watched calculation.
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _wake, waiter) if timeout is not None else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self._items:
                return None  # the timer woke us
        return self._items.popleft()

    @property
    def pending(self) -> int:
        return len(self._items)


class SessionListener(Protocol):
    def deliver(self, data: str | bytes) -> None:
        """One encoded session event (decoding it is the listener's business)."""
        ...

    def resync(self) -> None:
        """Session events may have been lost: re-read the truth."""
        ...


class EventBus(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, event: CalculationEvent) -> None: ...

    async def publish_session_event(self, data: str) -> None: ...

    def add_session_listener(self, listener: SessionListener) -> None: ...

    def remove_session_listener(self, listener: SessionListener) -> None: ...

    def subscribe(self, key: Key) -> contextlib.AbstractAsyncContextManager[Subscription]: ...

    @property
    def subscriber_count(self) -> int: ...


class _FanOut:
    def __init__(self) -> None:
        self._subscribers: dict[Key, set[Subscription]] = {}
        self._session_listeners: list[SessionListener] = []

    def add_session_listener(self, listener: SessionListener) -> None:
        self._session_listeners.append(listener)

    def remove_session_listener(self, listener: SessionListener) -> None:
        with contextlib.suppress(ValueError):
            self._session_listeners.remove(listener)

    def dispatch_session_event(self, data: str | bytes) -> None:
        for listener in tuple(self._session_listeners):
            listener.deliver(data)

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
        for listener in tuple(self._session_listeners):
            listener.resync()

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

    async def publish_session_event(self, data: str) -> None:
        self.dispatch_session_event(data)


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
        # With the other commands of this turn (a submit's job, other runs' events).
        raise_errors(
            await autopipeline(self.redis).execute(("PUBLISH", CALCULATION_EVENTS, event.encode()))
        )

    async def publish_session_event(self, data: str) -> None:
        await self.redis.publish(SESSION_EVENTS, data)

    async def _listen(self) -> None:
        delay = 0.05
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(CALCULATION_EVENTS, SESSION_EVENTS)
                # Wait for the confirmations, so "connected" means events now flow.
                confirmed = 0
                while confirmed < 2:
                    message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
                    if message is not None and message["type"] == "subscribe":
                        confirmed += 1
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
                        if message["channel"] in (SESSION_EVENTS, SESSION_EVENTS.encode()):
                            self.dispatch_session_event(message["data"])
                        else:
                            self._on_message(message["data"])
                    elif message["type"] == "subscribe" and message["channel"] in (
                        CALCULATION_EVENTS,
                        CALCULATION_EVENTS.encode(),
                    ):
                        # redis-py reconnected under us and subscribed again (to both
                        # channels; one resync is enough): events published in between
                        # are lost, so subscribers re-read.
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
