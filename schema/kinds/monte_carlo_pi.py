"""GraphQL types of ``monteCarloPi``."""

from __future__ import annotations

from typing import Self

import strawberry

from crunchql.compute.base import JSONDict
from crunchql.compute.catalog import MONTE_CARLO_PI
from crunchql.schema.kinds.base import KindSchema
from crunchql.schema.scalars import BigInt


@strawberry.input(description="1 <= samples <= 10^10.")
class MonteCarloPiInput:
    samples: BigInt
    seed: int | None = None


@strawberry.type
class MonteCarloPiResult:
    estimate: float
    standard_error: float
    samples: BigInt

    @classmethod
    def from_json(cls, data: JSONDict) -> Self:
        return cls(
            estimate=data["estimate"],
            standard_error=data["standardError"],
            samples=data["samples"],
        )


SCHEMA = KindSchema(kind=MONTE_CARLO_PI, input=MonteCarloPiInput, result=MonteCarloPiResult)
