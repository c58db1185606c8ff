"""Parameters of ``optionPricing``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from crunchql.compute import config
from crunchql.compute.base import JSONDict, ParameterError
from crunchql.compute.validation import check_enum, check_float, check_seed, required_int

OPTION_TYPES = ("CALL", "PUT")
OPTION_STYLES = ("EUROPEAN", "ASIAN")


def _required_float(
    raw: Mapping[str, Any], field: str, low: float, high: float, *, low_open: bool = True
) -> float:
    value = raw.get(field)
    if value is None:
        raise ParameterError(field, f"{field} is required")
    return check_float(field, value, low, high, low_open=low_open)


@dataclass(frozen=True)
class OptionPricingParams:
    """A European or arithmetic-average Asian option priced from ``paths`` antithetic pairs.

    Units: ``spot`` and ``strike`` in currency, ``rate`` continuously compounded per year,
    ``volatility`` per sqrt(year), ``maturity`` in years.
    """

    spot: float
    strike: float
    rate: float
    volatility: float
    maturity: float
    option_type: str
    style: str
    paths: int
    steps: int
    seed: int

    @classmethod
    def from_input(cls, raw: Mapping[str, Any]) -> Self:
        """Check an ``OptionPricingInput``, fill in ``steps`` and ``seed``.

        Bounds: ``spot, strike`` in (0, 1e9]; ``rate`` in [-1, 1]; ``volatility`` in (0, 5];
        ``maturity`` in (0, 100] years; ``paths`` 1 .. 10**7 antithetic pairs; ``steps``
        1 .. 10**4 (default 1 for EUROPEAN, 252 for ASIAN) and, for ASIAN,
        ``paths * steps <= MAX_PATH_STEPS``; ``seed`` 0 .. 2**31 - 1 (drawn when absent).

        Parameters
        ----------
        raw : mapping
            The GraphQL input (camelCase keys, enums by name).

        Raises
        ------
        ParameterError
            Naming the first offending field and its allowed range.
        """
        spot = _required_float(raw, "spot", 0.0, config.MAX_SPOT)
        strike = _required_float(raw, "strike", 0.0, config.MAX_STRIKE)
        rate = _required_float(
            raw, "rate", -config.MAX_ABS_RATE, config.MAX_ABS_RATE, low_open=False
        )
        volatility = _required_float(raw, "volatility", 0.0, config.MAX_VOLATILITY)
        maturity = _required_float(raw, "maturity", 0.0, config.MAX_MATURITY)
        option_type = check_enum(raw, "optionType", OPTION_TYPES)
        style = check_enum(raw, "style", OPTION_STYLES)
        paths = required_int(raw, "paths", 1, config.MAX_PATHS)
        if raw.get("steps") is None:
            steps = (
                config.DEFAULT_STEPS_ASIAN if style == "ASIAN" else config.DEFAULT_STEPS_EUROPEAN
            )
        else:
            steps = required_int(raw, "steps", 1, config.MAX_STEPS)
        if style == "ASIAN" and paths * steps > config.MAX_PATH_STEPS:
            raise ParameterError(
                "paths",
                f"paths * steps must be at most {config.MAX_PATH_STEPS} for ASIAN options "
                f"(got {paths} * {steps} = {paths * steps})",
            )
        return cls(
            spot=spot,
            strike=strike,
            rate=rate,
            volatility=volatility,
            maturity=maturity,
            option_type=option_type,
            style=style,
            paths=paths,
            steps=steps,
            seed=check_seed(raw.get("seed")),
        )

    def to_json(self) -> JSONDict:
        """``spot, strike, rate, volatility, maturity`` (float), ``optionType``, ``style``
        (str), ``paths, steps, seed`` (int)."""
        return {
            "spot": self.spot,
            "strike": self.strike,
            "rate": self.rate,
            "volatility": self.volatility,
            "maturity": self.maturity,
            "optionType": self.option_type,
            "style": self.style,
            "paths": self.paths,
            "steps": self.steps,
            "seed": self.seed,
        }
