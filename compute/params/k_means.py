"""Parameters of ``kMeans``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from crunchql.compute import config
from crunchql.compute.base import JSONDict, ParameterError
from crunchql.compute.validation import check_float, check_int, check_seed, required_int


@dataclass(frozen=True)
class KMeansParams:
    """``n`` points in ``dimensions`` dimensions around ``clusters`` true centres, clustered
    into ``k`` clusters by at most ``max_iterations`` Lloyd iterations."""

    n: int
    dimensions: int
    k: int
    clusters: int
    spread: float
    max_iterations: int
    seed: int

    @classmethod
    def from_input(cls, raw: Mapping[str, Any]) -> Self:
        """Check a ``KMeansInput`` and fill in the defaults.

        Parameters
        ----------
        raw : mapping
            ``n`` (2 .. 10**7), ``dimensions`` (1 .. 64), ``k`` (1 .. 256), optional
            ``clusters`` (1 .. 256, default ``k``), ``spread`` (0 .. 10, default 0.05),
            ``maxIterations`` (1 .. 1000, default 100) and ``seed`` (0 .. 2**31 - 1, drawn
            when absent); also ``n * dimensions * k <= 10**10``.

        Raises
        ------
        ParameterError
            Naming the first offending field.
        """
        n = required_int(raw, "n", config.MIN_KMEANS_POINTS, config.MAX_KMEANS_POINTS)
        dimensions = required_int(raw, "dimensions", 1, config.MAX_KMEANS_DIMENSIONS)
        k = required_int(raw, "k", 1, config.MAX_KMEANS_K)
        clusters = (
            k
            if raw.get("clusters") is None
            else check_int("clusters", raw["clusters"], 1, config.MAX_KMEANS_CLUSTERS)
        )
        spread = (
            config.DEFAULT_KMEANS_SPREAD
            if raw.get("spread") is None
            else check_float("spread", raw["spread"], 0.0, config.MAX_KMEANS_SPREAD)
        )
        max_iterations = (
            config.DEFAULT_KMEANS_ITERATIONS
            if raw.get("maxIterations") is None
            else check_int("maxIterations", raw["maxIterations"], 1, config.MAX_KMEANS_ITERATIONS)
        )
        work = n * dimensions * k
        if work > config.MAX_KMEANS_WORK:
            raise ParameterError(
                "n", f"n * dimensions * k must be at most {config.MAX_KMEANS_WORK} (got {work})"
            )
        return cls(
            n=n,
            dimensions=dimensions,
            k=k,
            clusters=clusters,
            spread=spread,
            max_iterations=max_iterations,
            seed=check_seed(raw.get("seed")),
        )

    def to_json(self) -> JSONDict:
        """``{"n", "dimensions", "k", "clusters", "spread", "maxIterations", "seed"}``."""
        return {
            "n": self.n,
            "dimensions": self.dimensions,
            "k": self.k,
            "clusters": self.clusters,
            "spread": self.spread,
            "maxIterations": self.max_iterations,
            "seed": self.seed,
        }
