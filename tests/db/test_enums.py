"""Status and role are Python enums on the models, stored exactly as before the change:
the member's value in the VARCHAR(16) column the migrations made, no database enum type,
no CHECK constraint (so no migration), on both backends."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import CheckConstraint, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite

from crunchql.db.engine import create_engine, create_session_factory, unit_of_work
from crunchql.db.models import Calculation, CalculationStatus, Role, User
from crunchql.schema import types as graphql_types


@pytest.mark.parametrize("dialect", [postgresql.dialect(), sqlite.dialect()])
@pytest.mark.parametrize("column", [Calculation.__table__.c.status, User.__table__.c.role])
def test_the_columns_stay_plain_varchar_16(dialect: Any, column: Any) -> None:
    assert column.type.compile(dialect=dialect) == "VARCHAR(16)"
    assert not [c for c in column.table.constraints if isinstance(c, CheckConstraint)]


async def test_values_are_stored_as_before_and_read_back_as_members(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with unit_of_work(create_session_factory(engine)) as session:
            admin = User(email=f"{uuid.uuid4().hex[:8]}@example.com", password_hash="x",
                         role=Role.ADMIN)  # fmt: skip
            session.add(admin)
            await session.flush()
            running = Calculation(owner_id=admin.id, kind="monteCarloPi", input={},
                                  status=CalculationStatus.RUNNING)  # fmt: skip
            session.add(running)
            await session.flush()
            # What the database holds is the plain text it always held.
            stored = await session.execute(
                text(
                    "SELECT c.status, u.role FROM calculations c JOIN users u ON u.id = c.owner_id"
                )
            )
            assert stored.one() == ("RUNNING", "ADMIN")
            # A row written as text (an older process, a hand-written fix) reads back typed.
            failed_id = uuid.uuid4()
            await session.execute(
                insert(Calculation.__table__).values(
                    id=failed_id,
                    owner_id=admin.id,
                    kind="monteCarloPi",
                    input={},
                    status="FAILED",
                    progress=0.0,
                    attempts=0,
                    version=0,
                )
            )
            failed = (
                await session.execute(select(Calculation).where(Calculation.id == failed_id))
            ).scalar_one()
            assert failed.status is CalculationStatus.FAILED
            assert (await session.get(User, admin.id)).role is Role.ADMIN  # type: ignore[union-attr]
            # Queries compare with members and find the rows stored as text.
            found = await session.execute(
                select(Calculation.id).where(Calculation.status == CalculationStatus.FAILED)
            )
            assert found.scalars().all() == [failed_id]
            defaults = User(email=f"{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
            session.add(defaults)
            await session.flush()
            assert defaults.role is Role.USER
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("model", "graphql"),
    [(CalculationStatus, graphql_types.CalculationStatus), (Role, graphql_types.Role)],
)
def test_the_graphql_enums_are_the_models_member_for_member(model: Any, graphql: Any) -> None:
    assert [m.value for m in model] == [m.value for m in graphql]
    assert all(graphql(member.value).name == member.name for member in model)


# SQLite cannot reflect the expression index on lower(email); it is compared on PostgreSQL.
@pytest.mark.filterwarnings("ignore:.*expression-based index:UserWarning")
@pytest.mark.filterwarnings("ignore:.*expression-based index")
async def test_the_models_match_the_migrated_schema_so_no_migration_is_needed(
    database_url: str,
) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from crunchql.db.models import Base

    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
                )
            )
    finally:
        await engine.dispose()
    assert differences == []
