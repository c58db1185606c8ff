"""Parameters of ``primeCount``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from crunchql.compute import config
from crunchql.compute.base import JSONDict
from crunchql.compute.validation import required_int


@dataclass(frozen=True)
class PrimeCountParams:
    """Count the primes ``p <= limit`` (0 .. 10**10)."""

    limit: int

    @classmethod
    def from_input(cls, raw: Mapping[str, Any]) -> Self:
        """Check a ``PrimeCountInput``.

        Parameters
        ----------
        raw : mapping
            ``{"limit": int (0 .. 10**10)}``; BigInt may arrive as a string of digits.

        Raises
        ------
        ParameterError
            For a missing, non-integer or out-of-range ``limit``.
        """
        return cls(limit=required_int(raw, "limit", 0, config.MAX_PRIME_LIMIT))

    def to_json(self) -> JSONDict:
        """``{"limit": int}``."""
        return {"limit": self.limit}
