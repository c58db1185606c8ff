"""The hot statements that run on asyncpg directly (``db.driver``) give exactly the rows
SQLAlchemy's own ``execute`` gives for the same statement and the same database state,
value for value and type for type, and fail as it does: a lost connection is an
invalidated ``OperationalError`` and leaves the pool healthy, a refused statement a
``DBAPIError`` on a connection that stays usable."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import exc, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from crunchql.db.driver import DriverStatement
from crunchql.db.engine import create_session_factory, single_statement
from crunchql.db.models import CalculationStatus
from crunchql.db.repositories import CalculationRepository
from crunchql.db.repositories import calculation as statements
from crunchql.db.repositories.calculation import store_quick_result
from tests.db.conftest import new_owner

INPUT = {"samples": 1000, "seed": 7, "note": "π ≈ 3.14 ✓", "nested": {"a": [1, 2.5, None]}}
RESULT = {"estimate": 3.1416, "stderr": 0.0123, "samples": 1000}
T0 = datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=UTC)


async def setup_rows(engine: AsyncEngine) -> dict[str, Any]:
    """An owner with a QUEUED calculation and one RUNNING on worker "w1"."""
    factory = create_session_factory(engine)
    owner = await new_owner(factory)
    async with single_statement(factory) as connection:
        repo = CalculationRepository(connection)
        queued = await repo.create(owner_id=owner, kind="monteCarloPi", params=INPUT, now=T0)
        running = await repo.create(owner_id=owner, kind="monteCarloPi", params=INPUT, now=T0)
        claimed = await repo.claim(running.id, "w1", T0, T0 - timedelta(minutes=1))
    assert claimed is not None and claimed.status is CalculationStatus.RUNNING
    return {"owner": owner, "queued": queued.id, "running": running.id}


Case = Callable[[dict[str, Any]], tuple[DriverStatement, dict[str, Any]]]


def submit(max_active: int) -> Case:
    return lambda rows: (
        statements._SUBMIT_CAPPED,
        {"p_id": uuid.uuid4(), "p_owner_id": rows["owner"], "p_kind": "monteCarloPi",
         "p_input": INPUT, "p_status": CalculationStatus.QUEUED, "p_progress": 0.0,
         "p_created_at": T0, "p_attempts": 0, "p_version": 0, "p_max_active": max_active},
    )  # fmt: skip


def claim(statement: DriverStatement, device: str = "cpu", **capped: Any) -> Case:
    return lambda rows: (
        statement,
        {"p_id": rows["queued"], "p_worker": "w2", "p_now": T0 + timedelta(seconds=1),
         "p_stale_before": T0 - timedelta(minutes=1), "p_device": device, **capped},
    )  # fmt: skip


def finish(statement: DriverStatement, worker: str = "w1", **outcome: Any) -> Case:
    """A finish of the RUNNING row; ``outcome`` overrides a success with RESULT."""
    return lambda rows: (
        statement,
        {"p_id": rows["running"], "p_worker": worker, "p_status": CalculationStatus.SUCCEEDED,
         "p_now": T0 + timedelta(seconds=2), "p_result": RESULT, "p_error": None,
         "p_version": 2, **{name: rows["owner"] if value is OWNER else value
                            for name, value in outcome.items()}},
    )  # fmt: skip


def quick(computed: dict[str, Any]) -> Case:
    return lambda rows: (
        statements._FINISH_QUEUED,
        {"p_id": rows["queued"], "p_worker": "w2", "p_kind": "monteCarloPi",
         "p_input": computed, "p_started": T0 + timedelta(seconds=1),
         "p_now": T0 + timedelta(seconds=2), "p_result": RESULT, "p_device": "cpu"},
    )  # fmt: skip


OWNER = object()  # stands for the owner's id, known once the rows exist
CAP = {"p_alive_after": T0 - timedelta(minutes=1), "p_max_running": 2}
FAILED = {"p_status": CalculationStatus.FAILED, "p_result": None, "p_error": "boom ✗"}

CASES: dict[str, Case] = {
    "submit, under the cap": submit(5),
    "submit, at the cap (no row)": submit(2),
    "a subscription's read": lambda rows: (statements._SELECT_ONE, {"p_id": rows["running"]}),
    "a read that finds nothing": lambda rows: (statements._SELECT_ONE, {"p_id": uuid.uuid4()}),
    "claim": claim(statements._CLAIM[False]),
    "claim under a running cap": claim(statements._CLAIM[True], **CAP),
    "claim under a running cap, by the function": claim(statements._CLAIM_CAPPED, "gpu", **CAP),
    "finish, succeeded": finish(statements._FINISH[True]),
    "finish, failed": finish(statements._FINISH[False], **FAILED),
    "finish by another worker (no row)": finish(statements._FINISH[True], worker="w9"),
    "finish and wake, by the function": finish(
        statements._FINISH_RUN, p_owner=OWNER, p_succeeded=True, p_wake=1
    ),
    "a quick run's finish": quick(INPUT),
    "a quick run's finish of another input (no row)": quick({**INPUT, "seed": 8}),
}


def typed(rows: list[dict[str, Any]]) -> list[dict[str, tuple[type, Any]]]:
    return [{name: (type(value), value) for name, value in row.items()} for row in rows]


@pytest.mark.parametrize("case", list(CASES))
async def test_a_hot_statement_gives_core_s_rows_value_for_value(
    engine: AsyncEngine, case: str
) -> None:
    rows = await setup_rows(engine)
    statement, values = CASES[case](rows)
    async with engine.connect() as connection:
        transaction = await connection.begin()
        savepoint = await connection.begin_nested()
        result = await connection.execute(statement.statement, values)
        through_core = [dict(row) for row in result.mappings()]
        await savepoint.rollback()  # the same state again for the driver's turn
        for _ in range(2):  # the first run describes the row; the second reuses that
            savepoint = await connection.begin_nested()
            direct = [dict(row) for row in await statement.fetch(connection, values)]
            await savepoint.rollback()
            assert typed(direct) == typed(through_core)
        await transaction.rollback()
    empty = case.endswith("(no row)") or case == "a read that finds nothing"
    assert (through_core == []) is empty
    if not empty:  # the datetimes are aware and in UTC, as everywhere else
        assert through_core[0]["created_at"] == T0 and through_core[0]["created_at"].tzinfo


async def test_the_repository_reads_back_what_it_wrote_directly(engine: AsyncEngine) -> None:
    factory = create_session_factory(engine)
    owner = await new_owner(factory)
    async with single_statement(factory) as connection:
        repo = CalculationRepository(connection)
        created = await repo.create_within_limit(
            owner_id=owner, kind="monteCarloPi", params=INPUT, now=T0, max_active=3
        )
        assert created is not None
    done = await store_quick_result(
        factory, created.id, "w1", kind="monteCarloPi", params=INPUT, started=T0,
        now=T0 + timedelta(milliseconds=5), result=RESULT, device="cpu",
    )  # fmt: skip
    assert done is not None and done.status is CalculationStatus.SUCCEEDED
    async with engine.connect() as connection:  # through Core, another connection
        stored = (
            (await connection.execute(select(statements._T).where(statements._T.c.id == done.id)))
            .mappings()
            .one()
        )
    assert stored["input"] == INPUT and stored["result"] == RESULT
    assert stored["status"] is CalculationStatus.SUCCEEDED and stored["version"] == 1
    assert stored["finished_at"] == T0 + timedelta(milliseconds=5)


async def test_a_lost_connection_is_invalidated_and_the_pool_recovers(
    postgres_url: str, engine: AsyncEngine
) -> None:
    admin = create_async_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            async with admin.connect() as other:
                await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with pytest.raises(exc.OperationalError) as raised:
                async with asyncio.timeout(30):
                    await statements._SELECT_ONE.fetch(connection, {"p_id": uuid.uuid4()})
            assert raised.value.connection_invalidated
            assert connection.invalidated
        async with engine.connect() as connection:  # a new backend, no error
            found = await statements._SELECT_ONE.fetch(connection, {"p_id": uuid.uuid4()})
            new_pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert found == [] and new_pid != pid
    finally:
        await admin.dispose()


async def test_a_refused_statement_is_sqlalchemy_s_error_and_the_connection_stays(
    engine: AsyncEngine,
) -> None:
    values = submit(5)({"owner": uuid.uuid4()})[1]  # nobody's id
    async with engine.connect() as connection:
        with pytest.raises(exc.IntegrityError) as raised:
            await statements._SUBMIT_CAPPED.fetch(connection, values)
        assert not raised.value.connection_invalidated and not connection.invalidated
        assert "fk_calculations_owner_id_users" in str(raised.value.orig)
        assert await statements._SELECT_ONE.fetch(connection, {"p_id": uuid.uuid4()}) == []


async def test_a_statement_without_fixed_sql_is_refused(engine: AsyncEngine) -> None:
    """An expanding IN is rendered per execution: there is no SQL to compile once."""
    table = statements._T
    expanding = DriverStatement(select(table).where(table.c.id.in_([uuid.uuid4()])), table)
    async with engine.connect() as connection:
        with pytest.raises(ValueError, match="not a fixed positional statement"):
            await expanding.fetch(connection, {})
