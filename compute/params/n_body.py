"""Parameters of ``nBody``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from crunchql.compute import config
from crunchql.compute.base import JSONDict, ParameterError
from crunchql.compute.validation import check_enum, check_float, check_seed, required_int

PRESETS = ("SOLAR_SYSTEM", "RANDOM_CLUSTER")
SOLAR_SYSTEM_BODIES = 5
"""The Sun and the four outer planets (the Benchmarks Game's system)."""
DT_RANGE_MESSAGE = "{field} must be greater than {low:g} and at most {high:g} (got {value})"


@dataclass(frozen=True)
class NBodyParams:
    """``steps`` leapfrog steps of ``dt`` years for a preset system (units: AU, years,
    solar masses)."""

    preset: str
    bodies: int
    steps: int
    dt: float
    seed: int

    @classmethod
    def from_input(cls, raw: Mapping[str, Any]) -> Self:
        """Check an ``NBodyInput`` and fill in ``bodies`` and the seed.

        Parameters
        ----------
        raw : mapping
            ``preset`` ("SOLAR_SYSTEM" or "RANDOM_CLUSTER"), ``steps`` (1 .. 10**6), ``dt``
            (years, 0 < dt <= 1), optional ``bodies`` (RANDOM_CLUSTER: 2 .. 5000, default
            1000; ignored and stored as 5 for SOLAR_SYSTEM) and ``seed`` (0 .. 2**31 - 1,
            drawn when absent). Also ``bodies**2 * steps <= 2.5 * 10**10``.

        Raises
        ------
        ParameterError
            Naming the first offending field.
        """
        preset = check_enum(raw, "preset", PRESETS)
        steps = required_int(raw, "steps", 1, config.MAX_NBODY_STEPS)
        if raw.get("dt") is None:
            raise ParameterError("dt", f"dt is required (0 < dt <= {config.MAX_DT:g})")
        dt = check_float(
            "dt", raw["dt"], 0.0, config.MAX_DT, low_open=True, message=DT_RANGE_MESSAGE
        )
        if preset == "SOLAR_SYSTEM":
            bodies = SOLAR_SYSTEM_BODIES
        elif raw.get("bodies") is None:
            bodies = config.DEFAULT_BODIES
        else:
            bodies = required_int(raw, "bodies", config.MIN_BODIES, config.MAX_BODIES)
        work = bodies * bodies * steps
        if work > config.MAX_BODY_PAIR_STEPS:
            raise ParameterError(
                "steps",
                f"bodies**2 * steps must be at most {config.MAX_BODY_PAIR_STEPS} (got {work})",
            )
        return cls(
            preset=preset, bodies=bodies, steps=steps, dt=dt, seed=check_seed(raw.get("seed"))
        )

    def to_json(self) -> JSONDict:
        """``{"preset", "bodies", "steps", "dt", "seed"}``."""
        return {
            "preset": self.preset,
            "bodies": self.bodies,
            "steps": self.steps,
            "dt": self.dt,
            "seed": self.seed,
        }
