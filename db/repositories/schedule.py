"""Schedules and their fire records.

The scheduler's writes are conditional (``claim``): a schedule is advanced only from
the ``next_fire_at`` it was read with, so a concurrent pause, delete or second
scheduler makes the claim miss instead of firing twice; the primary key of
``schedule_fires`` guarantees it even if that ever failed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Table,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from crunchql.db.models import (
    ACTIVE_STATUSES,
    Calculation,
    CalculationStatus,
    Schedule,
    ScheduleFire,
    ScheduleStatus,
    User,
)

# One advisory lock key for "the scheduler leader" (pg_try_advisory_lock(bigint)).
# Below 2^32, so pg_locks shows it as classid 0, objid KEY, objsubid 1.
LEADER_LOCK_KEY = 0x43524E51  # "CRNQ"
# NOTIFY channel: schedules changed, the leader re-reads its next due instant.
CHANGES_CHANNEL = "crunchql_schedule_changes"


@dataclass(frozen=True)
class SchedulePage:
    items: list[Schedule]
    has_next_page: bool


@dataclass(frozen=True)
class Claim:
    """Advance one schedule from ``due`` to ``next_fire_at`` (None: FINISHED)."""

    schedule_id: uuid.UUID
    due: datetime
    next_fire_at: datetime | None
    skipped: int = 0


def _keyset(model: Any, after: tuple[datetime, uuid.UUID] | None) -> Any:
    if after is None:
        return None
    created_at, last_id = after
    return or_(
        model.created_at < created_at, and_(model.created_at == created_at, model.id < last_id)
    )


class ScheduleRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def _postgres(self) -> bool:
        return self.session.get_bind().dialect.name == "postgresql"

    # --- the API ---------------------------------------------------------------------

    async def add(self, schedule: Schedule) -> Schedule:
        self.session.add(schedule)
        await self.session.flush()
        return schedule

    async def get(self, schedule_id: uuid.UUID, *, for_update: bool = False) -> Schedule | None:
        statement = select(Schedule).where(Schedule.id == schedule_id)
        if for_update:
            statement = statement.with_for_update()
        result = await self.session.execute(statement.execution_options(populate_existing=True))
        return result.scalar_one_or_none()

    async def list_by_ids(self, ids: Sequence[uuid.UUID]) -> list[Schedule]:
        if not ids:
            return []
        return list(
            (await self.session.execute(select(Schedule).where(Schedule.id.in_(ids)))).scalars()
        )

    async def count_active(self, owner_id: uuid.UUID) -> int:
        statement = select(func.count()).where(
            Schedule.owner_id == owner_id, Schedule.status == ScheduleStatus.ACTIVE
        )
        return int((await self.session.execute(statement)).scalar_one())

    async def list_for_owner(
        self,
        owner_id: uuid.UUID,
        *,
        first: int,
        after: tuple[datetime, uuid.UUID] | None,
        status: ScheduleStatus | None,
    ) -> SchedulePage:
        """Newest first, keyset-paginated on (created_at, id)."""
        statement = select(Schedule).where(Schedule.owner_id == owner_id)
        if status is not None:
            statement = statement.where(Schedule.status == status.value)
        position = _keyset(Schedule, after)
        if position is not None:
            statement = statement.where(position)
        statement = statement.order_by(Schedule.created_at.desc(), Schedule.id.desc())
        rows = list((await self.session.execute(statement.limit(first + 1))).scalars())
        return SchedulePage(items=rows[:first], has_next_page=len(rows) > first)

    async def list_runs(
        self, schedule_id: uuid.UUID, *, first: int, after: tuple[datetime, uuid.UUID] | None
    ) -> tuple[list[Calculation], bool]:
        """The schedule's calculations, newest first (same keyset as calculations)."""
        statement = select(Calculation).where(Calculation.schedule_id == schedule_id)
        position = _keyset(Calculation, after)
        if position is not None:
            statement = statement.where(position)
        statement = statement.order_by(Calculation.created_at.desc(), Calculation.id.desc())
        rows = list((await self.session.execute(statement.limit(first + 1))).scalars())
        return rows[:first], len(rows) > first

    async def delete(self, schedule_id: uuid.UUID) -> None:
        """The schedule and its fire records; its calculations stay, unlinked."""
        await self.session.execute(
            update(Calculation)
            .where(Calculation.schedule_id == schedule_id)
            .values(schedule_id=None)
            .execution_options(synchronize_session=False)
        )
        await self.session.execute(delete(Schedule).where(Schedule.id == schedule_id))

    async def notify_changed(self) -> None:
        """Wake the leader (PostgreSQL delivers a NOTIFY only when this commits)."""
        if self._postgres:
            await self.session.execute(select(func.pg_notify(CHANGES_CHANNEL, "")))

    # --- the scheduler ---------------------------------------------------------------

    async def list_due(self, now: datetime, limit: int) -> list[Any]:
        """ACTIVE schedules due at ``now``, earliest first, as plain rows (the scheduler
        reads thousands a minute: no ORM identity map). On PostgreSQL they stay locked
        until the transaction ends, and rows another transaction holds (a pause under
        way, a second scheduler) are skipped, never waited for."""
        table = cast(Table, Schedule.__table__)
        statement = (
            select(*table.c)
            .where(table.c.status == ScheduleStatus.ACTIVE, table.c.next_fire_at <= now)
            # By owner within an instant: concurrent batches then mostly lock
            # different owners (lock_owners), instead of queueing behind each other.
            .order_by(table.c.next_fire_at, table.c.owner_id)
            .limit(limit)
        )
        if self._postgres:
            statement = statement.with_for_update(skip_locked=True)
        return list(await self.session.execute(statement))

    async def next_due_at(self) -> datetime | None:
        statement = select(func.min(Schedule.next_fire_at)).where(
            Schedule.status == ScheduleStatus.ACTIVE
        )
        value: datetime | None = (await self.session.execute(statement)).scalar_one()
        return value

    async def lock_owners(self, owner_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, bool]:
        """Whether each owner is active, holding their rows (in id order, so two
        writers cannot deadlock) until the transaction ends: the active-calculation
        count below cannot change under us (submitCalculation takes the same lock)."""
        ids = sorted(set(owner_ids))
        statement = (
            select(User.id, User.is_active).where(User.id.in_(ids)).order_by(User.id)
        ).with_for_update()
        return {row.id: bool(row.is_active) for row in await self.session.execute(statement)}

    async def count_active_calculations(
        self, owner_ids: Iterable[uuid.UUID]
    ) -> dict[uuid.UUID, int]:
        statement = (
            select(Calculation.owner_id, func.count())
            .where(
                Calculation.owner_id.in_(list(set(owner_ids))),
                Calculation.status.in_(sorted(ACTIVE_STATUSES)),
            )
            .group_by(Calculation.owner_id)
        )
        return {row[0]: int(row[1]) for row in await self.session.execute(statement)}

    async def claim(self, claims: Sequence[Claim]) -> set[uuid.UUID]:
        """Advance every schedule still ACTIVE at its ``due`` instant; the ids advanced.
        One statement for the whole batch."""
        if not claims:
            return set()
        table = cast(Table, Schedule.__table__)
        by_id = {claim.schedule_id: claim for claim in claims}
        finished = [c.schedule_id for c in claims if c.next_fire_at is None]
        instant = table.c.next_fire_at.type
        following = {
            c.schedule_id: literal(c.next_fire_at, instant)
            for c in claims
            if c.next_fire_at is not None
        }
        next_fire = case(following, value=table.c.id, else_=null()) if following else null()
        skipped = [c for c in claims if c.skipped]
        values: dict[str, Any] = {"next_fire_at": next_fire}
        if finished:
            values["status"] = case(
                (table.c.id.in_(finished), ScheduleStatus.FINISHED),
                else_=table.c.status,
            )
        if skipped:
            values["skipped_runs"] = table.c.skipped_runs + case(
                {c.schedule_id: c.skipped for c in skipped}, value=table.c.id, else_=0
            )
        statement = (
            update(table)
            .where(
                table.c.status == ScheduleStatus.ACTIVE,
                tuple_(table.c.id, table.c.next_fire_at).in_(
                    [(c.schedule_id, c.due) for c in by_id.values()]
                ),
            )
            .values(**values)
            .returning(table.c.id)
        )
        return set((await self.session.execute(statement)).scalars())

    async def insert_fires(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            await self.session.execute(insert(cast(Table, ScheduleFire.__table__)), rows)

    async def insert_calculations(self, rows: list[dict[str, Any]]) -> None:
        """QUEUED calculations, by Core executemany (the ORM's bulk path costs several
        times more CPU per row; the columns' defaults fill in the rest)."""
        if rows:
            for row in rows:
                row.setdefault("status", CalculationStatus.QUEUED)
            await self.session.execute(insert(cast(Table, Calculation.__table__)), rows)

    async def leader(self) -> dict[str, Any] | None:
        """Who holds the leader lock now (PostgreSQL only), as its application_name."""
        if not self._postgres:
            return None
        row = (
            await self.session.execute(
                text(
                    "SELECT a.application_name, a.backend_start FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.classid = 0 AND l.objid = :key "
                    "AND l.objsubid = 1 AND l.granted "
                    # Advisory locks are per database; another database's leader is not ours.
                    "AND l.database = (SELECT oid FROM pg_database "
                    "WHERE datname = current_database())"
                ),
                {"key": LEADER_LOCK_KEY},
            )
        ).first()
        if row is None:
            return {"leader": None}
        return {"leader": row[0], "connectedAt": row[1].isoformat()}
