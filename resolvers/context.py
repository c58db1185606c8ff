"""The typed GraphQL context and the authentication helpers resolvers call."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import HTTPConnection
from strawberry.dataloader import DataLoader
from strawberry.types import Info

from crunchql.auth.tokens import AccessClaims
from crunchql.core.errors import CrunchError, UnauthenticatedError
from crunchql.core.logging import bind_log_context
from crunchql.db.engine import read_only
from crunchql.db.models import Schedule, User
from crunchql.db.repositories import UserRepository
from crunchql.db.repositories.schedule import ScheduleRepository
from crunchql.services.container import ServiceContainer
from crunchql.services.users import get_active_user


def users_by_id_loader(services: ServiceContainer) -> DataLoader[uuid.UUID, User | None]:
    """Batches ``owner`` and caller look-ups of one request: the process's short-lived
    user cache first, then one short read for the rest."""
    cache = services.user_cache

    async def load(ids: list[uuid.UUID]) -> list[User | None]:
        missing = [user_id for user_id in set(ids) if user_id not in cache]
        if missing:
            async with read_only(services.session_factory) as session:
                for user in await UserRepository(session).list_by_ids(missing):
                    cache[user.id] = user
        return [cache.get(user_id) for user_id in ids]

    return DataLoader(load_fn=load)


def schedules_by_id_loader(services: ServiceContainer) -> DataLoader[uuid.UUID, Schedule | None]:
    """``Calculation.schedule`` for a page of calculations, in one read. The caller
    sees the calculation, so it sees the schedule that created it (same owner)."""

    async def load(ids: list[uuid.UUID]) -> list[Schedule | None]:
        async with read_only(services.session_factory) as session:
            found = {row.id: row for row in await ScheduleRepository(session).list_by_ids(ids)}
        return [found.get(schedule_id) for schedule_id in ids]

    return DataLoader(load_fn=load)


@dataclass
class Context:
    services: ServiceContainer
    connection: HTTPConnection
    client: str
    claims: AccessClaims | None = None
    auth_error: CrunchError | None = None
    users_by_id: DataLoader[uuid.UUID, User | None] = field(init=False)
    schedules_by_id: DataLoader[uuid.UUID, Schedule | None] = field(init=False)
    # Filled in by Strawberry from the WebSocket connection_init payload.
    connection_params: dict[str, Any] | None = None
    request_id: str = ""
    # Run when the WebSocket closes (frees the user's socket slot).
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.users_by_id = users_by_id_loader(self.services)
        self.schedules_by_id = schedules_by_id_loader(self.services)


GraphQLInfo = Info[Context, None]


async def current_user(info: GraphQLInfo) -> User:
    """The authenticated, active user; UNAUTHENTICATED otherwise."""
    context = info.context
    if context.auth_error is not None:
        raise context.auth_error
    claims = context.claims
    if claims is None:
        raise UnauthenticatedError()
    # On a long-lived WebSocket the token may expire after connection_init: each new
    # operation checks it again.
    if claims.expires_at <= datetime.now(UTC):
        raise UnauthenticatedError("Access token has expired; refresh it.")
    user = await get_active_user(context.services, claims.user_id)
    if user is None:
        raise UnauthenticatedError("The account of this token no longer exists or is disabled.")
    bind_log_context(user_id=str(user.id))
    return user
