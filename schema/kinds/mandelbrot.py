"""GraphQL types of ``mandelbrot``."""

from __future__ import annotations

from typing import Self

import strawberry

from crunchql.compute.base import JSONDict
from crunchql.compute.catalog import MANDELBROT
from crunchql.schema.kinds.base import KindSchema


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


@strawberry.type
class MandelbrotResult:
    width: int
    height: int
    inside_fraction: float = strawberry.field(description="Share of pixels that never escaped.")
    png: str = strawberry.field(description="Base64-encoded PNG image.")

    @classmethod
    def from_json(cls, data: JSONDict) -> Self:
        return cls(
            width=data["width"],
            height=data["height"],
            inside_fraction=data["insideFraction"],
            png=data["png"],
        )


SCHEMA = KindSchema(kind=MANDELBROT, input=MandelbrotInput, result=MandelbrotResult)
