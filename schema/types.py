"""Output types and enums of the public contract (names fixed by it)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, Union, cast

import strawberry
from strawberry.types import Info

from crunchql.compute.base import JSONDict
from crunchql.core.lifecycle import CalculationSnapshot
from crunchql.db import models
from crunchql.schema.kinds import BY_KIND, KIND_SCHEMAS
from crunchql.schema.scalars import JSON

if TYPE_CHECKING:
    from crunchql.schema.schedule import Schedule


# The contract's enums, member for member the models' (tests/schema checks it).
@strawberry.enum
class Role(Enum):
    USER = "USER"
    ADMIN = "ADMIN"


@strawberry.enum
class CalculationStatus(Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@strawberry.type
class User:
    id: strawberry.ID
    email: str
    role: Role
    created_at: datetime
    is_active: bool = True
    last_login_at: datetime | None = None

    @classmethod
    def from_model(cls, user: models.User) -> User:
        return cls(
            id=strawberry.ID(str(user.id)),
            email=user.email,
            role=Role(user.role.value),
            created_at=user.created_at,
            is_active=user.is_active,
            last_login_at=user.last_login_at,
        )


@strawberry.type
class AuthPayload:
    access_token: str
    refresh_token: str
    user: User


if TYPE_CHECKING:
    CalculationResult = Any
else:
    # One member per kind, from the kinds' schema modules (schema/kinds/), in their order.
    CalculationResult = Annotated[
        Union[tuple(schema.result for schema in KIND_SCHEMAS)],  # noqa: UP007 - built at run time
        strawberry.union("CalculationResult"),
    ]


def result_from_json(kind: str, data: JSONDict | None) -> Any:
    """The ``CalculationResult`` member of ``kind`` built from its stored camelCase JSON.

    Raises KeyError for a kind that has no schema module (the completeness test in
    tests/test_kinds.py keeps the catalog and the schema in step).
    """
    if data is None:
        return None
    return BY_KIND[kind].result_from_json(data)


def _device(row: models.Calculation | CalculationSnapshot, status: CalculationStatus) -> str | None:
    """Where it ran or runs, "cpu" or "gpu"; None while QUEUED. The claiming worker stores
    its device (a split calculation: "gpu" once a GPU worker ran one of its shards); rows
    from before the column existed ran on a CPU worker."""
    if status is CalculationStatus.QUEUED:
        return None
    return row.device or ("cpu" if row.started_at is not None else None)


@strawberry.type
class Calculation:
    id: strawberry.ID
    kind: str = strawberry.field(description='The input field that was set, e.g. "monteCarloPi".')
    status: CalculationStatus
    progress: float = strawberry.field(
        description="0.0 .. 1.0, never decreasing; 1.0 when SUCCEEDED."
    )
    input: JSON = strawberry.field(description="The input as submitted, defaults filled in.")
    result: CalculationResult | None = strawberry.field(description="Set when SUCCEEDED.")
    partial_result: CalculationResult | None = strawberry.field(
        description="The running estimate with its standard error while RUNNING, "
        "for kinds that converge (monteCarloPi, optionPricing)."
    )
    error: str | None = strawberry.field(description="Set when FAILED.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int = strawberry.field(description="How many times a worker started it.")
    shards: int = strawberry.field(
        description="How many shards it is split into, to run on many workers (1 when not split)."
    )
    shards_done: int = strawberry.field(
        description="Shards whose partial result is stored (0 .. shards)."
    )
    device: str | None = strawberry.field(
        description='Where it ran or runs: "cpu" or "gpu"; null while QUEUED.'
    )
    owner_id: strawberry.Private[uuid.UUID]
    scheduled_for: datetime | None = strawberry.field(
        default=None, description="The fire instant it was created for."
    )
    schedule_id: strawberry.Private[uuid.UUID | None] = None

    @strawberry.field
    async def owner(self, info: Info) -> User:
        user = await info.context.users_by_id.load(self.owner_id)
        return User.from_model(user)

    @strawberry.field(description="The schedule that created it.")  # type: ignore[untyped-decorator]
    async def schedule(
        self, info: Info
    ) -> Annotated[Schedule, strawberry.lazy("crunchql.schema.schedule")] | None:
        from crunchql.schema.schedule import load_schedule

        return await load_schedule(info, self.schedule_id)

    @classmethod
    def from_model(cls, row: models.Calculation | CalculationSnapshot) -> Calculation:
        """From a row, or from the snapshot a subscription is shown."""
        status = CalculationStatus(row.status.value)
        return cls(
            id=strawberry.ID(str(row.id)),
            kind=row.kind,
            status=status,
            progress=float(row.progress),
            input=cast(JSON, row.input),
            result=result_from_json(row.kind, row.result),
            partial_result=result_from_json(row.kind, row.partial_result)
            if status is CalculationStatus.RUNNING
            else None,
            error=row.error,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            attempts=row.attempts,
            shards=row.shards,
            shards_done=row.shards_done,
            device=_device(row, status),
            owner_id=row.owner_id,
            scheduled_for=row.scheduled_for,
            schedule_id=row.schedule_id,
        )


@strawberry.type
class CalculationEdge:
    node: Calculation
    cursor: str


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class CalculationConnection:
    edges: list[CalculationEdge]
    page_info: PageInfo


@strawberry.type
class CalculationKind:
    name: str = strawberry.field(description='The input field name, e.g. "optionPricing".')
    description: str


@strawberry.type
class Session:
    id: strawberry.ID
    created_at: datetime
    last_used_at: datetime = strawberry.field(
        description="Updated when the session is used, at most once a minute."
    )
    expires_at: datetime = strawberry.field(description="Absolute: refreshing never extends it.")
    user_agent: str | None
    address: str | None
    current: bool = strawberry.field(
        description="True for the session of the access token making the request."
    )

    @classmethod
    def from_model(cls, row: models.AuthSession, current_id: uuid.UUID | None) -> Session:
        return cls(
            id=strawberry.ID(str(row.id)),
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            expires_at=row.expires_at,
            user_agent=row.user_agent,
            address=row.address,
            current=row.id == current_id,
        )


@strawberry.type
class UserEdge:
    node: User
    cursor: str


@strawberry.type
class UserConnection:
    edges: list[UserEdge]
    page_info: PageInfo


@strawberry.enum
class AuditAction(Enum):
    REGISTERED = "REGISTERED"
    LOGIN_SUCCEEDED = "LOGIN_SUCCEEDED"
    LOGIN_FAILED = "LOGIN_FAILED"
    LOGIN_RATE_LIMITED = "LOGIN_RATE_LIMITED"
    REFRESH_TOKEN_REUSED = "REFRESH_TOKEN_REUSED"  # noqa: S105 - a name, not a secret
    LOGGED_OUT = "LOGGED_OUT"
    LOGGED_OUT_EVERYWHERE = "LOGGED_OUT_EVERYWHERE"
    SESSION_REVOKED = "SESSION_REVOKED"
    PASSWORD_CHANGED = "PASSWORD_CHANGED"  # noqa: S105 - a name, not a secret
    ROLE_CHANGED = "ROLE_CHANGED"
    USER_DISABLED = "USER_DISABLED"
    USER_ENABLED = "USER_ENABLED"
    CALCULATION_CANCELLED_BY_ADMIN = "CALCULATION_CANCELLED_BY_ADMIN"


@strawberry.type
class AuditEvent:
    id: strawberry.ID
    at: datetime
    action: AuditAction
    address: str | None
    user_agent: str | None
    details: JSON = strawberry.field(description="Facts about the action; never a secret.")
    actor_id: strawberry.Private[uuid.UUID | None]
    target_user_id: strawberry.Private[uuid.UUID | None]

    @strawberry.field(description="Null for an anonymous or failed attempt.")  # type: ignore[untyped-decorator]
    async def actor(self, info: Info) -> User | None:
        return await _load_user(info, self.actor_id)

    @strawberry.field(description="The account acted upon, when there is one.")  # type: ignore[untyped-decorator]
    async def target_user(self, info: Info) -> User | None:
        return await _load_user(info, self.target_user_id)

    @classmethod
    def from_model(cls, row: models.AuditEvent) -> AuditEvent:
        return cls(
            id=strawberry.ID(str(row.id)),
            at=row.at,
            action=AuditAction(row.action),
            address=row.address,
            user_agent=row.user_agent,
            details=cast(JSON, row.details),
            actor_id=row.actor_id,
            target_user_id=row.target_user_id,
        )


async def _load_user(info: Info, user_id: uuid.UUID | None) -> User | None:
    if user_id is None:
        return None
    user = await info.context.users_by_id.load(user_id)
    return User.from_model(user) if user is not None else None


@strawberry.type
class AuditEventEdge:
    node: AuditEvent
    cursor: str


@strawberry.type
class AuditEventConnection:
    edges: list[AuditEventEdge]
    page_info: PageInfo
