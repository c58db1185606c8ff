from __future__ import annotations

import strawberry

from crunchql.core.errors import BadUserInputError
from crunchql.db.models import ScheduleStatus as ModelStatus
from crunchql.resolvers.context import GraphQLInfo, current_user
from crunchql.schema.inputs import selected_kind
from crunchql.schema.schedule import (
    MisfirePolicy,
    Schedule,
    ScheduleConnection,
    ScheduleEdge,
    ScheduleInput,
    ScheduleStatus,
)
from crunchql.schema.types import PageInfo
from crunchql.services import schedules
from crunchql.services.recurrence import MisfirePolicy as Policy


async def schedule(info: GraphQLInfo, id: strawberry.ID) -> Schedule | None:
    user = await current_user(info)
    row = await schedules.get_visible(info.context.services, user, id)
    return Schedule.from_model(row) if row is not None else None


async def schedules_page(
    info: GraphQLInfo,
    first: int | None = 20,
    after: str | None = None,
    status: ScheduleStatus | None = None,
) -> ScheduleConnection:
    user = await current_user(info)
    page = await schedules.list_own(
        info.context.services,
        user,
        first=20 if first is None else first,
        after=after,
        status=ModelStatus(status.value) if status is not None else None,
    )
    edges = [
        ScheduleEdge(node=Schedule.from_model(row), cursor=schedules.encode_cursor(row))
        for row in page.items
    ]
    return ScheduleConnection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=page.has_next_page, end_cursor=edges[-1].cursor if edges else None
        ),
    )


async def create_schedule(info: GraphQLInfo, input: ScheduleInput) -> Schedule:
    user = await current_user(info)
    try:
        kind, raw = selected_kind(input.calculation)
    except ValueError:
        raise BadUserInputError(
            "Set exactly one field of CalculationInput.", field="calculation"
        ) from None
    request = schedules.ScheduleRequest(
        kind=kind,
        raw_input=raw,
        cron=input.cron,
        run_at=input.run_at,
        timezone=input.timezone or "UTC",
        starts_at=input.starts_at,
        ends_at=input.ends_at,
        misfire_policy=Policy((input.misfire_policy or MisfirePolicy.RUN_ONCE).value),
        name=input.name,
    )
    return Schedule.from_model(await schedules.create(info.context.services, user, request))


async def pause_schedule(info: GraphQLInfo, id: strawberry.ID) -> Schedule:
    user = await current_user(info)
    return Schedule.from_model(await schedules.pause(info.context.services, user, id))


async def resume_schedule(info: GraphQLInfo, id: strawberry.ID) -> Schedule:
    user = await current_user(info)
    return Schedule.from_model(await schedules.resume(info.context.services, user, id))


async def delete_schedule(info: GraphQLInfo, id: strawberry.ID) -> bool:
    user = await current_user(info)
    return await schedules.delete(info.context.services, user, id)
