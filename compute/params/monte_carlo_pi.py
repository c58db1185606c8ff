"""Parameters of ``monteCarloPi``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from crunchql.compute import config
from crunchql.compute.base import JSONDict
from crunchql.compute.validation import check_seed, required_int


@dataclass(frozen=True)
class MonteCarloPiParams:
    """``samples`` points (1 .. 10**10) drawn from the streams of ``seed``."""

    samples: int
    seed: int

    @classmethod
    def from_input(cls, raw: Mapping[str, Any]) -> Self:
        """Check a ``MonteCarloPiInput`` and fill in the seed.

        Parameters
        ----------
        raw : mapping
            ``{"samples": int (1 .. 10**10), "seed": int (0 .. 2**31 - 1) or None/absent}``.

        Raises
        ------
        ParameterError
            For a missing, non-integer or out-of-range field.
        """
        samples = required_int(raw, "samples", 1, config.MAX_SAMPLES)
        return cls(samples=samples, seed=check_seed(raw.get("seed")))

    def to_json(self) -> JSONDict:
        """``{"samples": int, "seed": int}``."""
        return {"samples": self.samples, "seed": self.seed}
