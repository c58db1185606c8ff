"""Output types and enums of the public contract (names fixed by it)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, Union, cast

import strawberry
from strawberry.types import Info

from crunchql.db import models
from crunchql.schema.scalars import JSON, BigInt

if TYPE_CHECKING:
    from crunchql.schema.schedule import Schedule


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


@strawberry.enum
class OptionType(Enum):
    CALL = "CALL"
    PUT = "PUT"


@strawberry.enum(description="ASIAN: arithmetic average over the monitoring dates.")
class OptionStyle(Enum):
    EUROPEAN = "EUROPEAN"
    ASIAN = "ASIAN"


@strawberry.enum
class NBodyPreset(Enum):
    SOLAR_SYSTEM = "SOLAR_SYSTEM"
    RANDOM_CLUSTER = "RANDOM_CLUSTER"


@strawberry.type
class User:
    id: strawberry.ID
    email: str
    role: Role
    created_at: datetime

    @classmethod
    def from_model(cls, user: models.User) -> User:
        return cls(
            id=strawberry.ID(str(user.id)),
            email=user.email,
            role=Role(user.role),
            created_at=user.created_at,
        )


@strawberry.type
class AuthPayload:
    access_token: str
    refresh_token: str
    user: User


@strawberry.type
class MonteCarloPiResult:
    estimate: float
    standard_error: float
    samples: BigInt


@strawberry.type
class OptionPricingResult:
    price: float
    standard_error: float
    confidence_low: float = strawberry.field(description="Lower end of the 95 % interval.")
    confidence_high: float = strawberry.field(description="Upper end of the 95 % interval.")
    analytic_price: float | None = strawberry.field(
        default=None, description="Black-Scholes price, for EUROPEAN options."
    )


@strawberry.type
class PrimeCountResult:
    limit: BigInt
    count: BigInt


@strawberry.type
class MandelbrotResult:
    width: int
    height: int
    inside_fraction: float = strawberry.field(description="Share of pixels that never escaped.")
    png: str = strawberry.field(description="Base64-encoded PNG image.")


@strawberry.type
class NBodyResult:
    bodies: int
    steps: int
    initial_energy: float
    final_energy: float
    relative_energy_error: float


CalculationResult = Annotated[
    Union[  # noqa: UP007 - strawberry.union needs the typing form here
        MonteCarloPiResult, OptionPricingResult, PrimeCountResult, MandelbrotResult, NBodyResult
    ],
    strawberry.union("CalculationResult"),
]

RESULT_TYPES: dict[str, type[Any]] = {
    "monteCarloPi": MonteCarloPiResult,
    "optionPricing": OptionPricingResult,
    "primeCount": PrimeCountResult,
    "mandelbrot": MandelbrotResult,
    "nBody": NBodyResult,
}


def result_from_json(kind: str, data: dict[str, Any] | None) -> Any:
    """The union member for ``kind`` built from the stored camelCase result."""
    if data is None:
        return None
    result_type = RESULT_TYPES[kind]
    fields = {
        field.graphql_name or field.python_name: field.python_name
        for field in result_type.__strawberry_definition__.fields
    }
    names = {f.name for f in dataclasses.fields(result_type)}
    values = {}
    for key, value in data.items():
        python_name = fields.get(key) or _snake(key)
        if python_name in names:
            values[python_name] = value
    return result_type(**values)


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


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
    def from_model(
        cls, row: models.Calculation, overrides: Mapping[str, Any] | None = None
    ) -> Calculation:
        overrides = overrides or {}
        partial = overrides.get("partial_result", row.partial_result)
        status = CalculationStatus(row.status)
        return cls(
            id=strawberry.ID(str(row.id)),
            kind=row.kind,
            status=status,
            progress=float(overrides.get("progress", row.progress)),
            input=cast(JSON, row.input),
            result=result_from_json(row.kind, row.result),
            partial_result=result_from_json(row.kind, partial)
            if status is CalculationStatus.RUNNING
            else None,
            error=row.error,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            attempts=row.attempts,
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
