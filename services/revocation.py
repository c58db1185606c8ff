"""Revocation that reaches every API process within seconds.

A revoked session (logout, revocation, password change, refresh-token reuse, an ADMIN
disabling the account or changing its role) is announced as a ``SessionEvent`` on the
event bus (Redis pub/sub in production, in-process when embedded). Each process's
``SessionGuard`` listens once and

- remembers revoked session ids, so requests with their access tokens are refused at
  once (before any cache);
- ends every open subscription of those sessions (or of that user), by setting the
  event each subscription waits on beside its updates: no polling per subscription;
- forgets the account in the process's user cache when the account changed.

The database stays the truth: a session not seen in the last ``recheck_seconds`` is
read again on its next use, and the open subscriptions' sessions are re-read together
(one query) every ``recheck_seconds`` and after the bus reconnects, so a lost event
still takes effect within that bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from cachetools import TTLCache
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crunchql.core.errors import UnauthenticatedError
from crunchql.db.engine import read_only
from crunchql.db.repositories import AuthSessionRepository
from crunchql.pubsub.bus import EventBus

logger = logging.getLogger("crunchql.sessions")
T = TypeVar("T")


class SessionEndedError(UnauthenticatedError):
    def __init__(
        self, message: str = "This session has ended (logged out or revoked); log in again."
    ) -> None:
        super().__init__(message)


@dataclass(frozen=True)
class SessionEvent:
    """Sessions that ended, and/or an account that changed; crosses processes."""

    session_ids: tuple[uuid.UUID, ...] = ()
    user_id: uuid.UUID | None = None
    # The account itself changed (disabled, enabled, role): caches drop it.
    account_changed: bool = False
    # Every subscription of the user ends (disabled, role changed).
    end_user: bool = False

    def encode(self) -> str:
        return json.dumps(
            {
                "sessions": [str(each) for each in self.session_ids],
                "user": str(self.user_id) if self.user_id else None,
                "accountChanged": self.account_changed,
                "endUser": self.end_user,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, data: str | bytes) -> SessionEvent:
        """Raises ValueError (or KeyError, TypeError) on a malformed message."""
        event = json.loads(data)
        user = event.get("user")
        return cls(
            session_ids=tuple(uuid.UUID(str(each)) for each in event["sessions"]),
            user_id=uuid.UUID(str(user)) if user else None,
            account_changed=bool(event.get("accountChanged", False)),
            end_user=bool(event.get("endUser", False)),
        )


@dataclass(eq=False)
class _Watch:
    session_id: uuid.UUID
    user_id: uuid.UUID
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class SessionGuard:
    def __init__(
        self, *, recheck_seconds: float = 4.0, remember_seconds: float = 17 * 60.0
    ) -> None:
        self.recheck_seconds = recheck_seconds
        # Revoked sessions, for as long as one of their access tokens can live.
        self.revoked: TTLCache[uuid.UUID, bool] = TTLCache(100_000, remember_seconds)
        # Sessions read from the database as live: session id -> expires_at.
        self.live: TTLCache[uuid.UUID, datetime] = TTLCache(100_000, recheck_seconds)
        self._by_session: dict[uuid.UUID, set[_Watch]] = {}
        self._by_user: dict[uuid.UUID, set[_Watch]] = {}
        self._forget_user: Callable[[uuid.UUID], object] | None = None
        self._task: asyncio.Task[None] | None = None
        self._bus: EventBus | None = None
        self._wake = asyncio.Event()

    # ---- what the bus delivers (a SessionListener) ------------------------------

    def deliver(self, data: str | bytes) -> None:
        try:
            self.apply(SessionEvent.decode(data))
        except (KeyError, TypeError, ValueError):
            logger.warning("dropped a malformed session event")

    def resync(self) -> None:
        # Events may have been lost while the bus was away: re-read everything now.
        self.live.clear()
        self._wake.set()

    def apply(self, event: SessionEvent) -> None:
        for session_id in event.session_ids:
            self.revoked[session_id] = True
            self.live.pop(session_id, None)
            self._end(self._by_session.get(session_id, ()))
        if event.user_id is not None:
            if event.account_changed and self._forget_user is not None:
                self._forget_user(event.user_id)
            if event.end_user:
                self._end(self._by_user.get(event.user_id, ()))

    def _end(self, watches: Iterable[_Watch]) -> None:
        for watch in tuple(watches):
            watch.ended.set()

    # ---- open subscriptions ------------------------------------------------------

    @contextlib.contextmanager
    def watching(self, session_id: uuid.UUID, user_id: uuid.UUID) -> Iterator[asyncio.Event]:
        """An event set when this session (or the whole account) is ended."""
        watch = _Watch(session_id, user_id)
        self._by_session.setdefault(session_id, set()).add(watch)
        self._by_user.setdefault(user_id, set()).add(watch)
        if session_id in self.revoked:
            watch.ended.set()  # revoked between the caller's check and now
        try:
            yield watch.ended
        finally:
            for index, key in ((self._by_session, session_id), (self._by_user, user_id)):
                watches = index.get(key)
                if watches is not None:
                    watches.discard(watch)
                    if not watches:
                        del index[key]

    @property
    def watched_count(self) -> int:
        return sum(len(each) for each in self._by_session.values())

    async def recheck(self, factory: async_sessionmaker[AsyncSession]) -> None:
        """End the open subscriptions whose session the database says has ended."""
        if not self._by_session:
            return
        async with read_only(factory) as session:
            ended = await AuthSessionRepository(session).find_ended(
                list(self._by_session), datetime.now(UTC)
            )
        for session_id in ended:
            self.revoked[session_id] = True
            self.live.pop(session_id, None)
            self._end(self._by_session.get(session_id, ()))

    # ---- listening, and the periodic re-read ------------------------------------------

    async def start(
        self,
        bus: EventBus,
        factory: async_sessionmaker[AsyncSession],
        *,
        forget_user: Callable[[uuid.UUID], object] | None = None,
    ) -> None:
        self._forget_user = forget_user
        if self._task is None:
            self._bus = bus
            bus.add_session_listener(self)
            self._task = asyncio.create_task(self._recheck_loop(factory), name="session-guard")

    async def close(self) -> None:
        if self._bus is not None:
            self._bus.remove_session_listener(self)
            self._bus = None
        task, self._task = self._task, None
        # Python 3.11's wait_for can swallow a cancellation that lands as its inner
        # wait completes: cancel until the task has ended.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)

    async def _recheck_loop(self, factory: async_sessionmaker[AsyncSession]) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.recheck_seconds)
            self._wake.clear()
            try:
                await self.recheck(factory)
            except Exception as error:  # the next round tries again
                logger.warning("session recheck failed: %s", error)


async def until_ended(source: AsyncIterator[T], ended: asyncio.Event) -> AsyncIterator[T]:
    """``source``'s items until ``ended`` is set; then SessionEndedError. The source is
    closed either way.

    The consumer's own task awaits the source (no task per item: a subscription event
    fanned out to thousands of subscribers costs one task switch each, not three). If
    the session ends while it waits, that wait is cancelled the way ``asyncio.timeout``
    does it: only this cancellation turns into SessionEndedError, any other (the client
    completed the operation, the socket closed) stays a cancellation."""
    task = asyncio.current_task()
    assert task is not None, "until_ended runs in a task"
    waiting = False  # this task is awaiting the source
    interrupted = False  # and was cancelled for the session's end

    def interrupt(_: object) -> None:
        nonlocal interrupted
        if waiting and not interrupted and ended.is_set():
            interrupted = True
            task.cancel()

    waiter = asyncio.ensure_future(ended.wait())
    waiter.add_done_callback(interrupt)
    try:
        while True:
            if ended.is_set():
                raise SessionEndedError()
            waiting = True
            try:
                item = await anext(source)
            except StopAsyncIteration:
                if not interrupted:
                    return
            except asyncio.CancelledError:
                if not interrupted or task.uncancel() > 0:
                    raise
                raise SessionEndedError() from None
            finally:
                waiting = False
            if interrupted:  # the source swallowed the cancellation: undo it
                task.uncancel()
                raise SessionEndedError()
            yield item
    finally:
        waiter.remove_done_callback(interrupt)
        waiter.cancel()
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
