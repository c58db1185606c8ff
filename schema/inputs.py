"""Inputs of the compute catalog. Exactly one field of CalculationInput is set."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any

import strawberry

from crunchql.schema.kinds import KIND_SCHEMAS


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _calculation_input() -> type:
    """``CalculationInput``: one optional field per kind, named as the catalog names it and
    typed with the kind's input type (schema/kinds/), in the order of KIND_SCHEMAS."""
    namespace: dict[str, Any] = {"__annotations__": {}}
    for schema in KIND_SCHEMAS:
        python_name = _snake(schema.kind.name)
        namespace["__annotations__"][python_name] = schema.input | None
        namespace[python_name] = strawberry.field(default=strawberry.UNSET, name=schema.kind.name)
    return strawberry.input(
        type("CalculationInput", (), namespace),
        one_of=True,
        description="Exactly one field is set (@oneOf).",
    )


if TYPE_CHECKING:

    class CalculationInput:
        """Exactly one field is set (@oneOf); built at run time from KIND_SCHEMAS."""

else:
    CalculationInput = _calculation_input()


def to_plain(value: Any) -> Any:
    """A Strawberry input as the contract's JSON: camelCase keys, enums by name, unset dropped."""
    if isinstance(value, Enum):
        return value.name
    definition = getattr(type(value), "__strawberry_definition__", None)
    if definition is not None:
        plain: dict[str, Any] = {}
        for field in definition.fields:
            item = getattr(value, field.python_name)
            if item is strawberry.UNSET or item is None:
                continue  # null means "use the default", like an absent field
            name = field.graphql_name or _camel(field.python_name)
            plain[name] = to_plain(item)
        return plain
    return value


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def selected_kind(calculation_input: CalculationInput) -> tuple[str, dict[str, Any]]:
    """The one kind that was set, with its input as plain JSON."""
    plain = to_plain(calculation_input)
    if len(plain) != 1:
        raise ValueError("exactly one kind must be set")
    name, raw = next(iter(plain.items()))
    return str(name), dict(raw)
