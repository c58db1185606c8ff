"""The hot statements batched across the callers of one event-loop turn (``db.batches``):
the submits and the quick runs' results of one turn go out in one round trip and one
transaction on PostgreSQL, and each caller still gets exactly what its own statement
would have given: its row or None, its own error, the per-owner cap, the effect of an
earlier call with the same key. Two batches that lock the same owners never deadlock.

One transaction is read off the rows' ``xmin`` (the id of the transaction that wrote
them): rows of one batch share it, rows written one by one do not."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from crunchql.db.engine import create_session_factory, unit_of_work
from crunchql.db.models import CalculationStatus, Role
from crunchql.db.repositories import UserRepository
from crunchql.db.repositories.calculation import store_quick_result, submit_new
from tests.conftest import wait_for
from tests.db.conftest import new_owner

Factory = async_sessionmaker[AsyncSession]
INPUT = {"samples": 1000, "seed": 3}
RESULT = {"estimate": 3.14, "samples": 1000}
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
DEADLINE = 30  # seconds: a wait on the database that only a bug lets run out


@pytest.fixture
def factory(engine: AsyncEngine) -> Factory:
    return create_session_factory(engine)


def submitting(factory: Factory, owner: uuid.UUID, max_active: int = 0) -> Awaitable[Any]:
    return submit_new(
        factory, owner_id=owner, kind="monteCarloPi", params=INPUT, now=T0, max_active=max_active
    )


async def in_one_turn(*calls: Awaitable[Any]) -> list[Any]:
    """The calls' outcomes (a result or the exception), all made in the same turn."""
    async with asyncio.timeout(DEADLINE):
        return await asyncio.gather(*calls, return_exceptions=True)


async def writers(engine: AsyncEngine, ids: list[uuid.UUID]) -> list[int]:
    """The transaction that wrote each row (its xmin), in the order of ``ids``."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT id, xmin::text::bigint AS xid FROM calculations WHERE id = ANY(:ids)"),
            {"ids": ids},
        )
        by_id = {row.id: row.xid for row in rows}
    return [by_id[i] for i in ids]


async def test_the_submits_of_one_turn_are_one_transaction_each_its_own_row(
    engine: AsyncEngine, factory: Factory
) -> None:
    owners = [await new_owner(factory) for _ in range(3)]
    made = await in_one_turn(*(submitting(factory, owner, max_active=10) for owner in owners))
    assert [row.owner_id for row in made] == owners  # each caller its own row
    assert all(row.status is CalculationStatus.QUEUED and row.input == INPUT for row in made)
    assert len(set(await writers(engine, [row.id for row in made]))) == 1
    # Turn by turn, the same calls are a transaction each.
    alone = [await submitting(factory, owner) for owner in owners]
    assert len(set(await writers(engine, [row.id for row in alone]))) == 3


async def test_the_cap_holds_inside_a_batch(factory: Factory, engine: AsyncEngine) -> None:
    owner = await new_owner(factory)
    made = await in_one_turn(*(submitting(factory, owner, max_active=2) for _ in range(5)))
    assert sum(row is not None for row in made) == 2 and made.count(None) == 3
    async with engine.connect() as connection:
        stored = await connection.execute(
            text("SELECT count(*) FROM calculations WHERE owner_id = :o"), {"o": owner}
        )
        assert stored.scalar_one() == 2


async def test_a_refused_call_fails_alone_and_the_others_stand(
    engine: AsyncEngine, factory: Factory
) -> None:
    """Nobody's id breaks the owner's foreign key: the batch is rolled back whole, then
    each call runs on its own, and only that one is refused."""
    owner = await new_owner(factory)
    made = await in_one_turn(
        submitting(factory, owner), submitting(factory, uuid.uuid4()), submitting(factory, owner)
    )
    assert isinstance(made[1], exc.IntegrityError)
    assert "fk_calculations_owner_id_users" in str(made[1].orig)
    assert made[0].owner_id == owner and made[2].owner_id == owner
    assert len(set(await writers(engine, [made[0].id, made[2].id]))) == 2  # one by one


async def test_a_value_that_does_not_encode_fails_its_call_alone(
    engine: AsyncEngine, factory: Factory
) -> None:
    """A value the JSON column cannot take fails before anything is sent; the batch's
    other calls, and those of its later round trips, still get their rows."""
    owner = await new_owner(factory)
    queued = [(await submitting(factory, owner)).id for _ in range(2)]

    def storing(calculation_id: uuid.UUID, result: dict[str, Any]) -> Awaitable[Any]:
        return store_quick_result(
            factory, calculation_id, "w1", kind="monteCarloPi", params=INPUT, started=T0,
            now=T0 + timedelta(seconds=1), result=result, device="cpu",
        )  # fmt: skip

    # Round 1: the bad store of queued[0] and queued[1]'s; round 2: queued[0] again.
    stored = await in_one_turn(
        storing(queued[0], {"estimate": object()}), storing(queued[1], RESULT),
        storing(queued[0], RESULT),
    )  # fmt: skip
    assert isinstance(stored[0], exc.StatementError), stored[0]
    assert stored[1].id == queued[1] and stored[2].id == queued[0]
    assert stored[2].result == RESULT


async def test_a_caller_cancelled_in_its_turn_sends_nothing(
    engine: AsyncEngine, factory: Factory
) -> None:
    owner = await new_owner(factory)
    cancelled = asyncio.ensure_future(submitting(factory, owner))
    kept = asyncio.ensure_future(submitting(factory, owner))
    await asyncio.sleep(0)  # both are queued for the end of this turn
    cancelled.cancel()
    async with asyncio.timeout(DEADLINE):
        row = await kept
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    async with engine.connect() as connection:
        ids = (
            await connection.execute(
                text("SELECT id FROM calculations WHERE owner_id = :o"), {"o": owner}
            )
        ).scalars()
        assert list(ids) == [row.id]


async def test_a_lost_connection_fails_every_call_and_the_pool_recovers(
    postgres_url: str, engine: AsyncEngine, factory: Factory
) -> None:
    """The batch waits on the owner's row (locked here), its backend is terminated: every
    caller gets the invalidated ``OperationalError`` a lost statement gives."""
    owner = await new_owner(factory)
    async with engine.connect() as holder, holder.begin():
        await holder.execute(text("SELECT 1 FROM users WHERE id = :o FOR UPDATE"), {"o": owner})
        batch = asyncio.gather(
            *(submitting(factory, owner, max_active=5) for _ in range(3)), return_exceptions=True
        )
        pid = await wait_for(lambda: waiting_on_a_lock(engine), timeout=DEADLINE)
        await terminate(engine, pid)
        async with asyncio.timeout(DEADLINE):
            outcomes = await batch
    assert all(isinstance(o, exc.OperationalError) for o in outcomes), outcomes
    assert all(o.connection_invalidated for o in outcomes)
    row = await submitting(factory, owner, max_active=5)  # a new connection, no error
    assert row is not None and row.owner_id == owner


async def test_batches_that_lock_the_same_owners_do_not_deadlock(
    engine: AsyncEngine, factory: Factory
) -> None:
    """Owner ``first`` is locked here; batch 1 (first, second) waits on it; batch 2 asks
    for (second, first). Taken in that order, batch 2 would hold ``second`` while batch 1,
    woken, waits for it, and batch 1 hold ``first`` that batch 2 waits for: a deadlock,
    which PostgreSQL breaks after a second by failing one (its calls then going one by
    one). Each batch takes its owners in one order, so batch 2 queues behind batch 1
    instead, and each batch is still one transaction."""
    first, second = sorted([await new_owner(factory), await new_owner(factory)])
    async with engine.connect() as holder:
        transaction = await holder.begin()
        await holder.execute(text("SELECT 1 FROM users WHERE id = :o FOR UPDATE"), {"o": first})
        batch_1 = asyncio.gather(
            submitting(factory, first, max_active=5), submitting(factory, second, max_active=5)
        )
        await wait_for(lambda: waiting_on_a_lock(engine, count=1), timeout=DEADLINE)
        batch_2 = asyncio.gather(
            submitting(factory, second, max_active=5), submitting(factory, first, max_active=5)
        )
        await wait_for(lambda: waiting_on_a_lock(engine, count=2), timeout=DEADLINE)
        await transaction.commit()
    async with asyncio.timeout(DEADLINE):
        made_1, made_2 = await batch_1, await batch_2
    assert [row.owner_id for row in made_1] == [first, second]
    assert [row.owner_id for row in made_2] == [second, first]
    assert len(set(await writers(engine, [row.id for row in made_1]))) == 1
    assert len(set(await writers(engine, [row.id for row in made_2]))) == 1


async def test_an_admin_change_and_a_batch_of_submits_do_not_deadlock(
    engine: AsyncEngine, factory: Factory
) -> None:
    """An admin change locks the active admins, then changes a user; a batch of submits
    by that user and an admin locks both owners in id order. The change takes the user's
    row in the same id-ordered sweep as the admins', so the batch waits for it whole
    instead of holding the user while the change waits for it (a deadlock)."""
    user, admin = sorted([await new_owner(factory), await new_owner(factory)])
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE users SET role = :role WHERE id = :id"),
            {"role": Role.ADMIN.value, "id": admin},
        )
    async with unit_of_work(factory) as session:
        users = UserRepository(session)
        assert await users.lock_active_admins(with_user=user) == [admin]
        batch = asyncio.gather(
            submitting(factory, user, max_active=5), submitting(factory, admin, max_active=5)
        )
        await wait_for(lambda: waiting_on_a_lock(engine), timeout=DEADLINE)
        assert await users.update_fields(user, is_active=True) is not None
    async with asyncio.timeout(DEADLINE):
        made = await batch
    assert [row.owner_id for row in made] == [user, admin]
    assert len(set(await writers(engine, [row.id for row in made]))) == 1


async def test_quick_results_of_one_turn_are_one_transaction_and_a_duplicate_sees_the_first(
    engine: AsyncEngine, factory: Factory
) -> None:
    owner = await new_owner(factory)
    queued = [(await submitting(factory, owner)).id for _ in range(3)]

    def storing(calculation_id: uuid.UUID, worker: str) -> Awaitable[Any]:
        return store_quick_result(
            factory, calculation_id, worker, kind="monteCarloPi", params=INPUT,
            started=T0 + timedelta(seconds=1), now=T0 + timedelta(seconds=2), result=RESULT,
            device="cpu",
        )  # fmt: skip

    # The first calculation twice (a duplicate message): its second store finds it done.
    stored = await in_one_turn(
        storing(queued[0], "w1"), storing(queued[1], "w1"), storing(queued[0], "w2"),
        storing(queued[2], "w1"),
    )  # fmt: skip
    assert [row.id if row else None for row in stored] == [queued[0], queued[1], None, queued[2]]
    assert all(row.status is CalculationStatus.SUCCEEDED for row in stored if row)
    assert all(row.worker_id == "w1" and row.result == RESULT for row in stored if row)
    assert len(set(await writers(engine, [queued[1], queued[2]]))) == 1


async def waiting_on_a_lock(engine: AsyncEngine, count: int = 1) -> int | None:
    """The pid of a backend waiting on a lock, once ``count`` of them wait."""
    async with engine.connect() as connection:
        pids = (
            await connection.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database() ORDER BY pid"
                )
            )
        ).scalars()
        waiting = list(pids)
    return waiting[0] if len(waiting) >= count else None


async def terminate(engine: AsyncEngine, pid: int) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
