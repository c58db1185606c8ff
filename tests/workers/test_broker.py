"""The Redis broker's wake-up consumer and the worker's lost-message sweep, on real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest

from crunchql.db.engine import unit_of_work
from crunchql.db.models import Calculation, RefreshToken, User
from crunchql.workers.broker import QUEUE_NAME, CrunchRedisBroker, create_broker
from crunchql.workers.queues import ACTOR_NAME, DramatiqJobQueue


@pytest.fixture
def broker(redis_url: str) -> Iterator[CrunchRedisBroker]:
    broker = create_broker(redis_url)
    broker.flush_all()
    yield broker
    broker.flush_all()
    broker.close()


def test_an_idle_consumer_wakes_on_enqueue_instead_of_polling(broker: CrunchRedisBroker) -> None:
    # A 10 s idle timeout: without the wake-up the consumer would sleep that long.
    consumer = broker.consume(QUEUE_NAME, prefetch=1, timeout=10_000)
    calculation_id = uuid.uuid4()

    async def scenario() -> tuple[object, float]:
        idle = asyncio.create_task(asyncio.to_thread(next, consumer))
        await asyncio.sleep(0.2)  # let it block on the wake-up list
        sent = time.monotonic()
        DramatiqJobQueue(broker).send(calculation_id)
        first = await asyncio.wait_for(idle, 5)  # returns None: woken, not timed out
        message = await asyncio.to_thread(next, consumer)
        return (first, message), time.monotonic() - sent

    (first, message), elapsed = asyncio.run(scenario())
    assert first is None
    assert message is not None and message.actor_name == ACTOR_NAME
    assert message.args == (str(calculation_id),)
    assert elapsed < 5  # far below the 10 s the consumer would otherwise have slept
    consumer.ack(message)
    consumer.close()


async def test_sweep_resends_a_queued_calculation_whose_message_was_lost(
    database_url: str, redis_url: str, broker: CrunchRedisBroker
) -> None:
    from datetime import UTC, datetime, timedelta

    from crunchql.core.settings import Settings
    from crunchql.workers.lifecycle import QUEUED_RESEND_AFTER, WorkerRuntime

    settings = Settings(_env_file=None, database_url=database_url, redis_url=redis_url)  # type: ignore[call-arg]
    runtime = await WorkerRuntime.create(settings, broker)
    try:
        async with unit_of_work(runtime.services.session_factory) as session:
            user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
            session.add(user)
            await session.flush()
            old = Calculation(
                owner_id=user.id, kind="monteCarloPi", input={"samples": 10, "seed": 1},
                created_at=datetime.now(UTC) - QUEUED_RESEND_AFTER - timedelta(seconds=5),
            )  # fmt: skip
            fresh = Calculation(owner_id=user.id, kind="monteCarloPi", input={"samples": 10})
            orphan = Calculation(
                owner_id=user.id, kind="monteCarloPi", input={"samples": 10, "seed": 1},
                status="RUNNING", worker_id="dead", attempts=1,
                heartbeat_at=datetime.now(UTC) - timedelta(minutes=5),
            )  # fmt: skip
            session.add_all([old, fresh, orphan])
            stale_token = RefreshToken(
                user_id=user.id, family_id=uuid.uuid4(), token_hash="f" * 64,
                expires_at=datetime.now(UTC) - timedelta(days=2),
            )  # fmt: skip
            session.add(stale_token)
        # No message exists for any (as after a Redis restart): the old one is re-sent,
        # the fresh one is left to its own message, the orphaned run is handed back.
        assert broker.do_qsize(QUEUE_NAME) == 0
        assert await runtime.sweep_once() == 2
        assert broker.do_qsize(QUEUE_NAME) == 2
        async with unit_of_work(runtime.services.session_factory) as session:
            reloaded = await session.get(Calculation, orphan.id)
            assert reloaded is not None and reloaded.status == "QUEUED"
            # Long-expired refresh tokens are purged on the way.
            assert await session.get(RefreshToken, stale_token.id) is None
        # With messages waiting, nothing is guessed at, and the released run is not
        # re-sent again by the next sweep.
        assert await runtime.sweep_once() == 0
    finally:
        await runtime.close()
