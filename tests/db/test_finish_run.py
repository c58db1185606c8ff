"""A run's finish and the release of its owner's parked calculations: on PostgreSQL one
call of the function of migration 0009, on SQLite the two Core statements. Both give the
same rows; and on PostgreSQL a claim racing the finish is never left parked with nobody
to send it again."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from crunchql.db.engine import create_engine, create_session_factory, single_statement
from crunchql.db.models import Calculation, CalculationStatus
from crunchql.db.repositories import CalculationRepository
from tests.conftest import truncate
from tests.db.conftest import Factory, new_calculations, new_owner

CAP = 2


async def claim_or_park(
    factory: Factory, calculation_id: uuid.UUID, now: datetime
) -> tuple[Calculation | None, uuid.UUID | None]:
    stale = now - timedelta(seconds=30)
    async with single_statement(factory) as session:
        return await CalculationRepository(session).claim_or_park(
            calculation_id, "w", now, stale, max_running=CAP, alive_after=stale
        )


async def finish(
    factory: Factory,
    calculation_id: uuid.UUID,
    owner: uuid.UUID,
    now: datetime,
    *,
    status: CalculationStatus = CalculationStatus.SUCCEEDED,
    wake: int | None = CAP,
) -> tuple[Calculation | None, list[uuid.UUID]]:
    succeeded = status is CalculationStatus.SUCCEEDED
    async with single_statement(factory) as session:
        return await CalculationRepository(session).finish_and_wake(
            calculation_id, "w", owner_id=owner, status=status, now=now, version=2,
            result={"pi": 3.1} if succeeded else None, error=None if succeeded else "boom",
            wake=wake,
        )  # fmt: skip


async def read(factory: Factory, calculation_id: uuid.UUID) -> Calculation:
    async with single_statement(factory) as session:
        row = await CalculationRepository(session).read(calculation_id)
    assert row is not None
    return row


async def test_finish_stores_the_plain_finish_s_row_and_releases_the_oldest_parked(
    factory: Factory,
) -> None:
    owner = await new_owner(factory)
    ids = await new_calculations(factory, owner, 6)
    now = datetime.now(UTC)
    for calculation_id in ids[:CAP]:
        claimed, _ = await claim_or_park(factory, calculation_id, now)
        assert claimed is not None
    for calculation_id in ids[CAP:]:  # the cap is reached: all four parked
        assert await claim_or_park(factory, calculation_id, now) == (None, owner)

    later = now + timedelta(seconds=1)
    finished, woken = await finish(factory, ids[0], owner, later)
    # The same row as the plain finish stores.
    async with single_statement(factory) as session:
        plain = await CalculationRepository(session).finish(
            ids[1], "w", status=CalculationStatus.SUCCEEDED, now=later, version=2,
            result={"pi": 3.1},
        )  # fmt: skip
    assert finished is not None and plain is not None
    for row in (finished, plain, await read(factory, ids[0])):
        assert row.status is CalculationStatus.SUCCEEDED
        assert (row.result, row.error, row.progress, row.partial_result) == (
            {"pi": 3.1}, None, 1.0, None,
        )  # fmt: skip
        assert row.finished_at == row.heartbeat_at == later and row.version == 2
    # The two oldest parked, released (no longer parked) and still QUEUED; not the rest.
    assert woken == ids[CAP : CAP + 2]
    for calculation_id in ids[CAP:]:
        row = await read(factory, calculation_id)
        assert row.status is CalculationStatus.QUEUED
        assert (row.parked_at is None) == (calculation_id in woken)
    # Not this worker's run any more (finished): nothing stored, the parked still released.
    assert await finish(factory, ids[0], owner, later) == (None, ids[CAP + 2 :])
    # No cap: nothing released, nothing locked.
    assert await finish(factory, ids[1], owner, later, wake=None) == (None, [])


async def test_a_failed_run_keeps_its_progress(factory: Factory) -> None:
    owner = await new_owner(factory)
    (calculation_id,) = await new_calculations(factory, owner, 1)
    now = datetime.now(UTC)
    assert (await claim_or_park(factory, calculation_id, now))[0] is not None
    async with single_statement(factory) as session:
        assert await CalculationRepository(session).record_progress(
            calculation_id, "w", progress=0.5, partial_result={"pi": 3.0}, version=1, now=now
        )
    finished, woken = await finish(
        factory, calculation_id, owner, now, status=CalculationStatus.FAILED
    )
    assert finished is not None and woken == []
    assert (finished.status, finished.error, finished.result) == (
        CalculationStatus.FAILED, "boom", None,
    )  # fmt: skip
    assert (finished.progress, finished.partial_result) == (0.5, {"pi": 3.0})


async def test_a_claim_racing_the_finish_is_claimed_or_released_never_stranded(
    postgres_url: str,
) -> None:
    # PostgreSQL only (SQLite has one writer). The owner runs CAP calculations; one
    # finishes while a claim of another is made. Either the claim saw the finish (and
    # claimed), or it parked before the finish took the owner's lock (and the finish
    # released it): never parked with nobody to send it again, which is what happens
    # when the release's snapshot misses a park committed just before the finish's.
    await truncate(postgres_url)
    engine = create_engine(postgres_url)
    try:
        factory = create_session_factory(engine)
        for _ in range(30):
            owner = await new_owner(factory)
            ids = await new_calculations(factory, owner, CAP + 1)
            now = datetime.now(UTC)
            for calculation_id in ids[:CAP]:
                assert (await claim_or_park(factory, calculation_id, now))[0] is not None
            (claimed, parked), (_, woken) = await asyncio.gather(
                claim_or_park(factory, ids[CAP], now), finish(factory, ids[0], owner, now)
            )
            assert claimed is not None or (parked == owner and woken == [ids[CAP]])
    finally:
        await engine.dispose()
