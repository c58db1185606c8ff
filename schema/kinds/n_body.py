"""GraphQL types of ``nBody``."""

from __future__ import annotations

from enum import Enum
from typing import Self

import strawberry

from crunchql.compute.base import JSONDict
from crunchql.compute.catalog import N_BODY
from crunchql.schema.kinds.base import KindSchema


@strawberry.enum
class NBodyPreset(Enum):
    SOLAR_SYSTEM = "SOLAR_SYSTEM"
    RANDOM_CLUSTER = "RANDOM_CLUSTER"


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


@strawberry.type
class NBodyResult:
    bodies: int
    steps: int
    initial_energy: float
    final_energy: float
    relative_energy_error: float

    @classmethod
    def from_json(cls, data: JSONDict) -> Self:
        return cls(
            bodies=data["bodies"],
            steps=data["steps"],
            initial_energy=data["initialEnergy"],
            final_energy=data["finalEnergy"],
            relative_energy_error=data["relativeEnergyError"],
        )


SCHEMA = KindSchema(kind=N_BODY, input=NBodyInput, result=NBodyResult)
