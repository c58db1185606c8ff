"""The submit under a per-user cap of active calculations: on PostgreSQL one call of the
function of migration 0008, on SQLite the Core statement. Both give the same rows, and
parallel submits of one owner never pass the cap on PostgreSQL, whatever process sends
them (no in-process lock is taken there)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from crunchql.db.engine import create_engine, create_session_factory, single_statement
from crunchql.db.models import Calculation, CalculationStatus
from crunchql.db.repositories import CalculationRepository
from tests.conftest import truncate
from tests.db.conftest import Factory, new_owner

PARAMS = {"samples": 1000, "seed": 7}


async def submit(factory: Factory, owner: uuid.UUID, now: datetime) -> Calculation | None:
    async with single_statement(factory) as session:
        return await CalculationRepository(session).create_within_limit(
            owner_id=owner, kind="monteCarloPi", params=PARAMS, now=now, max_active=2
        )


async def test_capped_submit_gives_the_plain_insert_s_row_until_the_cap(factory: Factory) -> None:
    owner = await new_owner(factory)
    now = datetime.now(UTC)
    capped = await submit(factory, owner, now)
    async with single_statement(factory) as session:
        plain = await CalculationRepository(session).create(
            owner_id=owner, kind="monteCarloPi", params=PARAMS, now=now
        )
    assert capped is not None
    for row in (capped, plain):
        assert (row.owner_id, row.kind, row.input, row.status) == (
            owner, "monteCarloPi", PARAMS, CalculationStatus.QUEUED,
        )  # fmt: skip
        assert (row.progress, row.attempts, row.version, row.shards, row.shards_done) == (
            0.0, 0, 0, 1, 0,
        )  # fmt: skip
        assert row.created_at == now
        assert row.started_at is row.finished_at is row.worker_id is row.parked_at is None
    # Stored, committed: another session reads it.
    async with single_statement(factory) as session:
        stored = await CalculationRepository(session).read(capped.id)
    assert stored is not None and stored.input == PARAMS and stored.created_at == now
    # Two active: the cap refuses the third, and nothing is stored.
    assert await submit(factory, owner, now) is None
    async with single_statement(factory) as session:
        assert await CalculationRepository(session).count_active(owner) == 2
        # A finished one frees a place.
        assert await CalculationRepository(session).cancel(plain.id, now)
    assert await submit(factory, owner, now) is not None


async def test_parallel_capped_submits_of_one_owner_never_pass_the_cap(postgres_url: str) -> None:
    # PostgreSQL only: SQLite serialises one owner's submits with an in-process lock.
    await truncate(postgres_url)
    engine = create_engine(postgres_url)
    try:
        factory = create_session_factory(engine)
        owner = await new_owner(factory)
        now = datetime.now(UTC)
        rows = await asyncio.gather(*(submit(factory, owner, now) for _ in range(12)))
        assert sum(row is not None for row in rows) == 2
        async with single_statement(factory) as session:
            assert await CalculationRepository(session).count_active(owner) == 2
    finally:
        await engine.dispose()
