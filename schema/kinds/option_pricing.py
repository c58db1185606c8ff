"""GraphQL types of ``optionPricing``."""

from __future__ import annotations

from enum import Enum
from typing import Self

import strawberry

from crunchql.compute.base import JSONDict
from crunchql.compute.catalog import OPTION_PRICING
from crunchql.schema.kinds.base import KindSchema


@strawberry.enum
class OptionType(Enum):
    CALL = "CALL"
    PUT = "PUT"


@strawberry.enum(description="ASIAN: arithmetic average over the monitoring dates.")
class OptionStyle(Enum):
    EUROPEAN = "EUROPEAN"
    ASIAN = "ASIAN"


@strawberry.input(
    description="spot, strike, maturity (years) > 0; volatility > 0; 1 <= paths <= 10^7; "
    "steps (monitoring dates, default 1 for EUROPEAN, 252 for ASIAN) 1 ..= 10^4."
)
class OptionPricingInput:
    spot: float
    strike: float
    rate: float
    volatility: float
    maturity: float
    option_type: OptionType
    style: OptionStyle
    paths: int
    steps: int | None = None
    seed: int | None = None


@strawberry.type
class OptionPricingResult:
    price: float
    standard_error: float
    confidence_low: float = strawberry.field(description="Lower end of the 95 % interval.")
    confidence_high: float = strawberry.field(description="Upper end of the 95 % interval.")
    analytic_price: float | None = strawberry.field(
        default=None, description="Black-Scholes price, for EUROPEAN options."
    )

    @classmethod
    def from_json(cls, data: JSONDict) -> Self:
        return cls(
            price=data["price"],
            standard_error=data["standardError"],
            confidence_low=data["confidenceLow"],
            confidence_high=data["confidenceHigh"],
            analytic_price=data.get("analyticPrice"),
        )


SCHEMA = KindSchema(kind=OPTION_PRICING, input=OptionPricingInput, result=OptionPricingResult)
