from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

import strawberry

from crunchql.compute.catalog import KINDS
from crunchql.core.errors import BadUserInputError, RateLimitedError
from crunchql.db.models import CalculationStatus as ModelStatus
from crunchql.db.models import User
from crunchql.observability.metrics import record_submitted, tracking_subscription
from crunchql.resolvers.context import GraphQLInfo, client_info, current_claims, current_user
from crunchql.schema.inputs import CalculationInput, selected_kind
from crunchql.schema.sharing import direct_sink, shared_calculation
from crunchql.schema.types import (
    Calculation,
    CalculationConnection,
    CalculationEdge,
    CalculationKind,
    CalculationStatus,
    PageInfo,
)
from crunchql.services import calculation_feed, calculations
from crunchql.services.revocation import until_ended


async def calculation(info: GraphQLInfo, id: strawberry.ID) -> Calculation | None:
    user = await current_user(info)
    row = await calculations.get_visible(info.context.services, user, id)
    return Calculation.from_model(row) if row is not None else None


async def calculations_page(
    info: GraphQLInfo,
    first: int | None = 20,
    after: str | None = None,
    status: CalculationStatus | None = None,
) -> CalculationConnection:
    user = await current_user(info)
    page = await calculations.list_own(
        info.context.services,
        user,
        first=20 if first is None else first,
        after=after,
        status=model_status(status),
    )
    edges = [
        CalculationEdge(node=Calculation.from_model(row), cursor=calculations.encode_cursor(row))
        for row in page.items
    ]
    return CalculationConnection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=page.has_next_page,
            end_cursor=edges[-1].cursor if edges else None,
        ),
    )


def calculation_kinds() -> list[CalculationKind]:
    return [
        CalculationKind(name=kind.name, description=kind.description) for kind in KINDS.values()
    ]


async def submit_calculation(info: GraphQLInfo, input: CalculationInput) -> Calculation:
    user = await current_user(info)
    try:
        kind, raw = selected_kind(input)
    except ValueError:
        raise BadUserInputError(
            "Set exactly one field of CalculationInput.", field="input"
        ) from None
    row = await calculations.submit(info.context.services, user, kind, raw)
    record_submitted(row.kind)
    return Calculation.from_model(row)


async def cancel_calculation(info: GraphQLInfo, id: strawberry.ID) -> Calculation:
    user = await current_user(info)
    cancelled = await calculations.cancel(info.context.services, user, id, client_info(info))
    return Calculation.from_model(cancelled)


async def calculation_updates(
    info: GraphQLInfo,
    id: strawberry.ID,
) -> AsyncGenerator[Calculation, None]:
    user = await current_user(info)
    sink = direct_sink()
    async with _subscription_slot(info, user) as ended:
        updates = calculations.watch(info.context.services, user, id)
        async for snapshot in until_ended(updates, ended):
            # One object per state of the calculation, shared by its subscribers,
            # so that the event is executed once (schema.sharing)...
            calculation = shared_calculation(snapshot)
            # ...and, over graphql-transport-ws, serialised once and written straight
            # to the socket; what the sink declines goes the normal way.
            if sink is not None and await sink.deliver(calculation):
                if snapshot.status.is_terminal:
                    # Let every other subscriber woken by this event have its frame
                    # before this one's completion and clean-up run: in a fan-out to
                    # thousands, the last terminal frame is not kept waiting behind
                    # everyone else's teardown.
                    await asyncio.sleep(0)
                continue
            yield calculation


@asynccontextmanager
async def _subscription_slot(info: GraphQLInfo, user: User) -> AsyncIterator[asyncio.Event]:
    """One of the user's open-subscription slots (all sockets, all processes), held for
    the life of the subscription; yields the event set when the caller's session (or the
    whole account) is ended anywhere, which ends the stream with UNAUTHENTICATED."""
    services = info.context.services
    limit = services.limits.ws_max_subscriptions_per_user
    slot = await services.slots.acquire(f"subscriptions:{user.id}", limit)
    if slot is None:
        raise RateLimitedError(
            f"The limit of {limit} open subscriptions per user (all sockets together) is "
            "reached; complete one first.",
            retry_after=calculations.COUNT_LIMIT_RETRY_SECONDS,
        )
    guard = services.session_guard
    async with services.slots.holding(slot):
        with (
            tracking_subscription(),
            guard.watching(current_claims(info).session_id, user.id) as ended,
        ):
            yield ended


def model_status(status: CalculationStatus | None) -> ModelStatus | None:
    """The stored status a GraphQL status filter stands for."""
    return ModelStatus(status.value) if status is not None else None


async def calculation_count(
    info: GraphQLInfo, status: CalculationStatus | None = None, kind: str | None = None
) -> int:
    user = await current_user(info)
    return await calculations.count_own(
        info.context.services, user, status=model_status(status), kind=kind
    )


async def resubmit_calculation(info: GraphQLInfo, id: strawberry.ID) -> Calculation:
    user = await current_user(info)
    row = await calculations.resubmit(info.context.services, user, id)
    record_submitted(row.kind)
    return Calculation.from_model(row)


async def my_calculation_updates(
    info: GraphQLInfo, kind: str | None, status: CalculationStatus | None
) -> AsyncGenerator[Calculation, None]:
    user = await current_user(info)
    async with _subscription_slot(info, user) as ended:
        feed = calculation_feed.watch_own(
            info.context.services, user, kind=kind, status=model_status(status)
        )
        async for snapshot in until_ended(feed, ended):
            yield Calculation.from_model(snapshot)
