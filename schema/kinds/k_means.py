"""GraphQL types of ``kMeans`` (contract: ``tests/contract/kmeans.graphql``)."""

from __future__ import annotations

from typing import Self

import strawberry

from crunchql.compute.base import JSONDict
from crunchql.compute.catalog import K_MEANS
from crunchql.schema.kinds.base import KindSchema


@strawberry.input(
    description="Points drawn from the seed: `clusters` (default k) centres uniform in the "
    "unit cube, each point a centre plus N(0, spread^2) noise per coordinate (spread "
    "default 0.05, 0 ..= 10). 2 <= n <= 10^7; 1 <= dimensions <= 64; 1 <= k, clusters "
    "<= 256; 1 <= maxIterations <= 1000 (default 100); n * dimensions * k <= 10^10."
)
class KMeansInput:
    n: int
    dimensions: int
    k: int
    clusters: int | None = None
    spread: float | None = None
    max_iterations: int | None = None
    seed: int | None = None


@strawberry.type
class KMeansResult:
    k: int
    iterations: int
    converged: bool
    inertia: float = strawberry.field(
        description="Sum of squared distances to the assigned centroid."
    )
    centroids: list[list[float]] = strawberry.field(
        description="k rows of `dimensions` coordinates."
    )
    recovered_fraction: float = strawberry.field(
        description="Purity: each found cluster is labelled with the true cluster most of its "
        "points come from; the share of points whose label is their own."
    )

    @classmethod
    def from_json(cls, data: JSONDict) -> Self:
        return cls(
            k=data["k"],
            iterations=data["iterations"],
            converged=data["converged"],
            inertia=data["inertia"],
            centroids=data["centroids"],
            recovered_fraction=data["recoveredFraction"],
        )


SCHEMA = KindSchema(kind=K_MEANS, input=KMeansInput, result=KMeansResult)
