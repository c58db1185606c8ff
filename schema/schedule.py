"""Schedule types, enums and input of the schedules contract extension."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import Enum
from typing import cast

import strawberry
from strawberry.types import Info

from crunchql.db import models
from crunchql.schema.inputs import CalculationInput
from crunchql.schema.scalars import JSON
from crunchql.schema.types import (
    Calculation,
    CalculationConnection,
    CalculationEdge,
    PageInfo,
    User,
)
from crunchql.services import schedules
from crunchql.services.calculations import encode_cursor


@strawberry.enum
class ScheduleStatus(Enum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    FINISHED = "FINISHED"


@strawberry.enum
class MisfirePolicy(Enum):
    SKIP = "SKIP"
    RUN_ONCE = "RUN_ONCE"


@strawberry.input(
    description="Exactly one of cron (five fields, Debian cron, in timezone) and runAt."
)
class ScheduleInput:
    calculation: CalculationInput
    cron: str | None = None
    run_at: datetime | None = None
    timezone: str | None = "UTC"
    starts_at: datetime | None = strawberry.field(
        default=None, description="No fire before this instant."
    )
    ends_at: datetime | None = strawberry.field(
        default=None, description="No fire after this instant; FINISHED then."
    )
    misfire_policy: MisfirePolicy | None = MisfirePolicy.RUN_ONCE
    name: str | None = None


@strawberry.type
class Schedule:
    id: strawberry.ID
    name: str | None
    status: ScheduleStatus
    kind: str
    input: JSON = strawberry.field(
        description='The calculation input as stored, e.g. {"monteCarloPi": {...}}.'
    )
    cron: str | None
    run_at: datetime | None
    timezone: str
    starts_at: datetime | None
    ends_at: datetime | None
    misfire_policy: MisfirePolicy
    next_run_at: datetime | None = strawberry.field(description="Null when PAUSED or FINISHED.")
    skipped_runs: int = strawberry.field(
        description="Fires that created no calculation: the owner was at the "
        "active-calculation limit."
    )
    created_at: datetime
    row: strawberry.Private[models.Schedule]

    @strawberry.field(description="The coming fire instants, at most 100.")  # type: ignore[untyped-decorator]
    def next_runs(self, info: Info, count: int | None = 5) -> list[datetime]:
        limits = info.context.services.limits
        return schedules.next_runs(self.row, limits, 5 if count is None else count)

    @strawberry.field(description="Its calculations, newest first.")  # type: ignore[untyped-decorator]
    async def runs(
        self, info: Info, first: int | None = 20, after: str | None = None
    ) -> CalculationConnection:
        rows, has_next = await schedules.list_runs(
            info.context.services, self.row, first=20 if first is None else first, after=after
        )
        edges = [
            CalculationEdge(node=Calculation.from_model(row), cursor=encode_cursor(row))
            for row in rows
        ]
        return CalculationConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=has_next, end_cursor=edges[-1].cursor if edges else None
            ),
        )

    @strawberry.field
    async def owner(self, info: Info) -> User:
        user = await info.context.users_by_id.load(self.row.owner_id)
        return User.from_model(user)

    @classmethod
    def from_model(cls, row: models.Schedule) -> Schedule:
        active = row.status == models.ScheduleStatus.ACTIVE
        return cls(
            id=strawberry.ID(str(row.id)),
            name=row.name,
            status=ScheduleStatus(row.status),
            kind=row.kind,
            input=cast(JSON, {row.kind: row.input}),
            cron=row.cron,
            run_at=row.run_at,
            timezone=row.timezone,
            starts_at=row.starts_at,
            ends_at=row.ends_at,
            misfire_policy=MisfirePolicy(row.misfire_policy),
            next_run_at=row.next_fire_at if active else None,
            skipped_runs=row.skipped_runs,
            created_at=row.created_at,
            row=row,
        )


@strawberry.type
class ScheduleEdge:
    node: Schedule
    cursor: str


@strawberry.type
class ScheduleConnection:
    edges: list[ScheduleEdge]
    page_info: PageInfo


async def load_schedule(info: Info, schedule_id: uuid.UUID | None) -> Schedule | None:
    """``Calculation.schedule``: through the request's loader (null once deleted)."""
    if schedule_id is None:
        return None
    row = await info.context.schedules_by_id.load(schedule_id)
    return Schedule.from_model(row) if row is not None else None
