"""What joins a catalog kind to its GraphQL types: one :class:`KindSchema` per kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

from crunchql.compute.base import JSONDict, Kind


class KindResult(Protocol):
    """A kind's GraphQL result type: built explicitly from the stored camelCase JSON."""

    @classmethod
    def from_json(cls, data: JSONDict) -> Self: ...


R = TypeVar("R", bound=KindResult)


@dataclass(frozen=True)
class KindSchema(Generic[R]):
    """The GraphQL side of one catalog kind.

    ``kind`` is the catalog entry itself (not its name), so a schema module cannot name a
    kind that does not exist; ``CalculationInput`` gets a field ``kind.name`` of type
    ``input`` and the ``CalculationResult`` union gets ``result`` as a member.
    """

    kind: Kind[Any]
    input: type
    """The Strawberry input type, e.g. ``MonteCarloPiInput``."""
    result: type[R]
    """The Strawberry result type, e.g. ``MonteCarloPiResult``."""

    def result_from_json(self, data: JSONDict) -> R:
        """The result (or partial result) stored as ``data``."""
        return self.result.from_json(data)
