"""Inputs of the compute catalog. Exactly one field of CalculationInput is set."""

from __future__ import annotations

from enum import Enum
from typing import Any

import strawberry

from crunchql.schema.scalars import BigInt
from crunchql.schema.types import NBodyPreset, OptionStyle, OptionType


@strawberry.input(description="1 <= samples <= 10^10.")
class MonteCarloPiInput:
    samples: BigInt
    seed: int | None = None


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


@strawberry.input(description="Counts primes p <= limit; 0 <= limit <= 10^10.")
class PrimeCountInput:
    limit: BigInt


@strawberry.input(
    description="Window defaults: x in [-2.5, 1.0], y in [-1.25, 1.25]; "
    "1 <= width, height <= 4096; 1 <= maxIterations <= 100000."
)
class MandelbrotInput:
    width: int
    height: int
    max_iterations: int
    x_min: float | None = None
    x_max: float | None = None
    y_min: float | None = None
    y_max: float | None = None


@strawberry.input(
    description="Units: AU, years, solar masses (G = 4 pi^2). SOLAR_SYSTEM: the Benchmarks "
    "Game's five bodies; RANDOM_CLUSTER: `bodies` masses (default 1000, 2 ..= 5000) placed "
    "from the seed. 1 <= steps <= 10^6; dt > 0."
)
class NBodyInput:
    preset: NBodyPreset
    bodies: int | None = None
    steps: int
    dt: float
    seed: int | None = None


@strawberry.input(one_of=True, description="Exactly one field is set (@oneOf).")
class CalculationInput:
    monte_carlo_pi: MonteCarloPiInput | None = strawberry.UNSET
    option_pricing: OptionPricingInput | None = strawberry.UNSET
    prime_count: PrimeCountInput | None = strawberry.UNSET
    mandelbrot: MandelbrotInput | None = strawberry.UNSET
    n_body: NBodyInput | None = strawberry.UNSET


def to_plain(value: Any) -> Any:
    """A Strawberry input as the contract's JSON: camelCase keys, enums by name, unset dropped."""
    if isinstance(value, Enum):
        return value.name
    definition = getattr(type(value), "__strawberry_definition__", None)
    if definition is not None:
        plain: dict[str, Any] = {}
        for field in definition.fields:
            item = getattr(value, field.python_name)
            if item is strawberry.UNSET or item is None:
                continue  # null means "use the default", like an absent field
            name = field.graphql_name or _camel(field.python_name)
            plain[name] = to_plain(item)
        return plain
    return value


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def selected_kind(calculation_input: CalculationInput) -> tuple[str, dict[str, Any]]:
    """The one kind that was set, with its input as plain JSON."""
    plain = to_plain(calculation_input)
    if len(plain) != 1:
        raise ValueError("exactly one kind must be set")
    name, raw = next(iter(plain.items()))
    return str(name), dict(raw)
