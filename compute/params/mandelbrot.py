"""Parameters of ``mandelbrot``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from crunchql.compute import config
from crunchql.compute.base import JSONDict, ParameterError
from crunchql.compute.validation import check_float, required_int

COORDINATE_RANGE_MESSAGE = "{field} must be between {low:g} and {high:g} (got {value})"


@dataclass(frozen=True)
class MandelbrotParams:
    """A ``width`` x ``height`` render of the window ``[x_min, x_max] x [y_min, y_max]``."""

    width: int
    height: int
    max_iterations: int
    x_min: float
    x_max: float
    y_min: float
    y_max: float

    @classmethod
    def from_input(cls, raw: Mapping[str, Any]) -> Self:
        """Check a ``MandelbrotInput`` and fill in the default window.

        Parameters
        ----------
        raw : mapping
            ``width``, ``height`` (1 .. 4096), ``maxIterations`` (1 .. 100000), optional
            ``xMin``, ``xMax``, ``yMin``, ``yMax`` (finite, ``|.| <= 10**6``, ``xMin < xMax``,
            ``yMin < yMax``); also ``width * height * maxIterations <= 2**35``.

        Raises
        ------
        ParameterError
            Naming the first offending field.
        """
        width = required_int(raw, "width", 1, config.MAX_SIDE)
        height = required_int(raw, "height", 1, config.MAX_SIDE)
        max_iterations = required_int(raw, "maxIterations", 1, config.MAX_ITERATIONS)
        window: dict[str, float] = {}
        for field, default in zip(
            ("xMin", "xMax", "yMin", "yMax"), config.DEFAULT_WINDOW, strict=True
        ):
            value = raw.get(field)
            window[field] = (
                default
                if value is None
                else check_float(
                    field,
                    value,
                    -config.MAX_ABS_COORDINATE,
                    config.MAX_ABS_COORDINATE,
                    message=COORDINATE_RANGE_MESSAGE,
                )
            )
        for low, high in (("xMin", "xMax"), ("yMin", "yMax")):
            if not window[low] < window[high]:
                raise ParameterError(
                    high,
                    f"{high} must be greater than {low} (got {window[low]} and {window[high]})",
                )
        work = width * height * max_iterations
        if work > config.MAX_PIXEL_ITERATIONS:
            raise ParameterError(
                "maxIterations",
                "width * height * maxIterations must be at most "
                f"{config.MAX_PIXEL_ITERATIONS} (got {work})",
            )
        return cls(
            width=width,
            height=height,
            max_iterations=max_iterations,
            x_min=window["xMin"],
            x_max=window["xMax"],
            y_min=window["yMin"],
            y_max=window["yMax"],
        )

    def to_json(self) -> JSONDict:
        """``{"width", "height", "maxIterations", "xMin", "xMax", "yMin", "yMax"}``."""
        return {
            "width": self.width,
            "height": self.height,
            "maxIterations": self.max_iterations,
            "xMin": self.x_min,
            "xMax": self.x_max,
            "yMin": self.y_min,
            "yMax": self.y_max,
        }
