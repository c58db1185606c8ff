"""The session guard: revocations reach open subscriptions through the bus, not by
polling each one; the database is the truth when an event is lost."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from crunchql.auth.tokens import AccessClaims
from crunchql.db.engine import create_engine, unit_of_work
from crunchql.db.models import AuthSession, User
from crunchql.db.repositories import AuthSessionRepository
from crunchql.services.container import ServiceContainer
from crunchql.services.revocation import (
    SessionEndedError,
    SessionEvent,
    SessionGuard,
    until_ended,
)
from crunchql.services.sessions import announce, ensure_live
from tests.services.conftest import make_services


@pytest.fixture
async def services(database_url: str) -> AsyncIterator[ServiceContainer]:
    engine = create_engine(database_url)
    services = make_services(engine, session_guard=SessionGuard(recheck_seconds=0.2))
    yield services
    await services.session_guard.close()
    await engine.dispose()


async def make_session(services: ServiceContainer) -> tuple[User, AuthSession]:
    async with unit_of_work(services.session_factory) as session:
        user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
        session.add(user)
        await session.flush()
        auth_session = AuthSession(
            user_id=user.id, expires_at=datetime.now(UTC) + timedelta(days=1)
        )
        session.add(auth_session)
    return user, auth_session


def claims_of(user: User, auth_session: AuthSession) -> AccessClaims:
    return AccessClaims(
        user_id=user.id, role="USER", token_id="t", session_id=auth_session.id,
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
    )  # fmt: skip


def test_session_event_round_trip() -> None:
    event = SessionEvent(
        session_ids=(uuid.uuid4(), uuid.uuid4()), user_id=uuid.uuid4(), account_changed=True,
        end_user=True,
    )  # fmt: skip
    assert SessionEvent.decode(event.encode()) == event
    assert SessionEvent.decode(SessionEvent().encode()) == SessionEvent()


async def forever() -> AsyncIterator[int]:
    yield 1
    await asyncio.Event().wait()
    yield 2  # pragma: no cover


async def test_an_open_stream_ends_when_its_session_is_revoked_elsewhere(
    services: ServiceContainer,
) -> None:
    user, auth_session = await make_session(services)
    other_user, other_session = await make_session(services)
    guard = services.session_guard
    await guard.start(services.bus, services.session_factory)
    received: list[int] = []
    streaming = [asyncio.Event(), asyncio.Event()]

    async def consume(session_id: uuid.UUID, user_id: uuid.UUID, started: asyncio.Event) -> None:
        with guard.watching(session_id, user_id) as ended:
            async for item in until_ended(forever(), ended):
                received.append(item)
                started.set()

    mine = asyncio.create_task(consume(auth_session.id, user.id, streaming[0]))
    theirs = asyncio.create_task(consume(other_session.id, other_user.id, streaming[1]))
    for started in streaming:
        await asyncio.wait_for(started.wait(), 5)
    # What another process publishes: only the event, nothing applied locally.
    await services.bus.publish_session_event(SessionEvent(session_ids=(auth_session.id,)).encode())
    with pytest.raises(SessionEndedError):
        await asyncio.wait_for(mine, 5)
    assert not theirs.done()
    # A whole account ended (disabled, role changed): every stream of that user.
    await services.bus.publish_session_event(
        SessionEvent(user_id=other_user.id, end_user=True).encode()
    )
    with pytest.raises(SessionEndedError):
        await asyncio.wait_for(theirs, 5)
    assert received == [1, 1]
    assert guard.watched_count == 0


async def test_a_lost_event_is_made_up_for_by_the_database(services: ServiceContainer) -> None:
    user, auth_session = await make_session(services)
    guard = services.session_guard
    await guard.start(services.bus, services.session_factory)
    with guard.watching(auth_session.id, user.id) as ended:
        # Revoked in the database only (the event never came).
        async with unit_of_work(services.session_factory) as session:
            await AuthSessionRepository(session).revoke(
                datetime.now(UTC), "LOGGED_OUT", session_id=auth_session.id
            )
        await asyncio.wait_for(ended.wait(), 5)  # recheck_seconds is 0.2 here


async def test_requests_of_a_revoked_session_are_refused_at_once(
    services: ServiceContainer,
) -> None:
    user, auth_session = await make_session(services)
    claims = claims_of(user, auth_session)
    await ensure_live(services, claims)  # live, and now cached as live
    assert auth_session.id in services.session_guard.live
    await announce(services, SessionEvent(session_ids=(auth_session.id,)))
    with pytest.raises(SessionEndedError):
        await ensure_live(services, claims)
    # Another process (a fresh guard) finds out from the database.
    async with unit_of_work(services.session_factory) as session:
        await AuthSessionRepository(session).revoke(
            datetime.now(UTC), "LOGGED_OUT", session_id=auth_session.id
        )
    services.session_guard = SessionGuard()
    with pytest.raises(SessionEndedError):
        await ensure_live(services, claims)


async def test_an_expired_session_is_refused(services: ServiceContainer) -> None:
    user, auth_session = await make_session(services)
    async with unit_of_work(services.session_factory) as session:
        row = await session.get(AuthSession, auth_session.id)
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    with pytest.raises(SessionEndedError, match="expired"):
        await ensure_live(services, claims_of(user, auth_session))


async def test_a_stream_that_ends_by_itself_is_closed_normally(services: ServiceContainer) -> None:
    async def three() -> AsyncIterator[int]:
        for item in range(3):
            yield item

    with services.session_guard.watching(uuid.uuid4(), uuid.uuid4()) as ended:
        assert [item async for item in until_ended(three(), ended)] == [0, 1, 2]


async def test_a_stream_cancelled_from_outside_stays_a_cancellation() -> None:
    """The client completing the operation (its task cancelled) is not a session end."""
    ended = asyncio.Event()
    waiting = asyncio.Event()

    async def quiet() -> AsyncIterator[int]:
        waiting.set()
        await asyncio.Event().wait()
        yield 1  # pragma: no cover

    async def consume() -> None:
        async for _ in until_ended(quiet(), ended):
            pass  # pragma: no cover

    task = asyncio.create_task(consume())
    await asyncio.wait_for(waiting.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_session_ended_between_items_ends_the_stream_at_the_next_step() -> None:
    """Ended while the consumer is busy with an item (not waiting on the source): that
    work is not interrupted, and the stream ends before asking for another item."""
    ended = asyncio.Event()
    received: list[int] = []
    finished_its_work = asyncio.Event()

    async def consume() -> None:
        async for item in until_ended(forever(), ended):
            ended.set()
            for _ in range(5):
                await asyncio.sleep(0)  # the end is noticed meanwhile; this goes on
            received.append(item)
            finished_its_work.set()

    task = asyncio.create_task(consume())
    with pytest.raises(SessionEndedError):
        await asyncio.wait_for(task, 5)
    assert finished_its_work.is_set() and received == [1]
    assert not task.cancelled()
