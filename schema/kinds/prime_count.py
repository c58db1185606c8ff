"""GraphQL types of ``primeCount``."""

from __future__ import annotations

from typing import Self

import strawberry

from crunchql.compute.base import JSONDict
from crunchql.compute.catalog import PRIME_COUNT
from crunchql.schema.kinds.base import KindSchema
from crunchql.schema.scalars import BigInt


@strawberry.input(description="Counts primes p <= limit; 0 <= limit <= 10^10.")
class PrimeCountInput:
    limit: BigInt


@strawberry.type
class PrimeCountResult:
    limit: BigInt
    count: BigInt

    @classmethod
    def from_json(cls, data: JSONDict) -> Self:
        return cls(limit=data["limit"], count=data["count"])


SCHEMA = KindSchema(kind=PRIME_COUNT, input=PrimeCountInput, result=PrimeCountResult)
