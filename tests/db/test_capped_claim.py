"""The claim under a per-user running cap: on PostgreSQL one call of the function of
migration 0007, on SQLite the Core statements. Both must give the same rows."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from crunchql.db.engine import single_statement
from crunchql.db.models import CalculationStatus
from crunchql.db.repositories import CalculationRepository
from tests.db.conftest import Factory, new_calculations, new_owner


async def test_claim_park_or_nothing_and_the_same_row_as_the_plain_claim(
    factory: Factory,
) -> None:
    owner = await new_owner(factory)
    first, second, third = await new_calculations(factory, owner, 3)
    now = datetime.now(UTC)
    stale = now - timedelta(seconds=30)

    async def claim_or_park(calculation_id: uuid.UUID, worker: str = "w") -> tuple:  # type: ignore[type-arg]
        async with single_statement(factory) as session:
            return await CalculationRepository(session).claim_or_park(
                calculation_id, worker, now, stale, max_running=2, alive_after=stale,
                device="gpu",
            )  # fmt: skip

    claimed, parked = await claim_or_park(first)
    assert claimed is not None and parked is None
    async with single_statement(factory) as session:  # the plain claim, for comparison
        plain = await CalculationRepository(session).claim(
            second, "w", now, stale, max_running=2, alive_after=stale, device="gpu"
        )
    assert plain is not None
    for row in (claimed, plain):
        assert row.status is CalculationStatus.RUNNING
        assert (row.attempts, row.version, row.worker_id, row.device) == (1, 1, "w", "gpu")
        assert row.started_at == row.heartbeat_at == now
        assert row.parked_at is None and row.owner_id == owner
    # The owner runs two: the third is refused and parked, QUEUED.
    assert await claim_or_park(third) == (None, owner)
    async with single_statement(factory) as session:
        row = await CalculationRepository(session).read(third)
    assert row is not None and row.status is CalculationStatus.QUEUED and row.parked_at == now
    # Alive on a worker: nothing, neither claimed nor parked.
    assert await claim_or_park(first, worker="other") == (None, None)
    # A run ends: the parked one is claimed, and no longer parked.
    async with single_statement(factory) as session:
        assert await CalculationRepository(session).cancel(second, now)
    claimed, parked = await claim_or_park(third)
    assert claimed is not None and claimed.parked_at is None and parked is None
    # Finished: nothing.
    async with single_statement(factory) as session:
        assert await CalculationRepository(session).cancel(third, now)
    assert await claim_or_park(third) == (None, None)


async def test_parallel_claims_of_one_owner_never_pass_the_cap(factory: Factory) -> None:
    owner = await new_owner(factory)
    ids = await new_calculations(factory, owner, 6)
    now = datetime.now(UTC)
    stale = now - timedelta(seconds=30)

    async def claim_or_park(calculation_id: uuid.UUID) -> tuple:  # type: ignore[type-arg]
        async with single_statement(factory) as session:
            return await CalculationRepository(session).claim_or_park(
                calculation_id, f"w-{calculation_id}", now, stale, max_running=2,
                alive_after=stale,
            )  # fmt: skip

    results = await asyncio.gather(*(claim_or_park(each) for each in ids))
    assert sum(claimed is not None for claimed, _ in results) == 2
    assert [parked for claimed, parked in results if claimed is None] == [owner] * 4
