"""Scalars of the contract beyond GraphQL's own: BigInt and JSON (DateTime is Strawberry's)."""

from __future__ import annotations

import re
from typing import Any, NewType

import strawberry
from graphql import IntValueNode, StringValueNode, ValueNode
from strawberry.scalars import JSON
from strawberry.types.scalar import ScalarDefinition

MAX_SAFE_INTEGER = 2**53
MAX_BIG_INT = 10**30  # far above any limit a calculation accepts
# ASCII digits only (``\d`` would take "١٢٣" and other scripts' digits), optional sign.
_DIGITS = re.compile(r"[+-]?[0-9]{1,30}", re.ASCII)


def serialize_big_int(value: int) -> int | str:
    return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else str(value)


def parse_big_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("BigInt must be an integer, not a boolean.")
    if isinstance(value, int):
        if abs(value) >= MAX_BIG_INT:
            raise ValueError("BigInt is out of range (at most 30 digits).")
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    raise ValueError("BigInt must be an integer: a JSON number or a string of digits.")


def parse_big_int_literal(node: ValueNode, _variables: Any = None) -> int:
    if isinstance(node, StringValueNode):
        return parse_big_int(node.value)
    if isinstance(node, IntValueNode):
        if len(node.value) > 31:  # before int(): no 5,000-digit conversion
            raise ValueError("BigInt is out of range (at most 30 digits).")
        return parse_big_int(int(node.value))
    raise ValueError("BigInt must be an integer: a number or a string of digits.")


BigInt = NewType("BigInt", int)

BIG_INT_SCALAR = strawberry.scalar(
    name="BigInt",
    description="Integer beyond 32 bits; a JSON number when it fits 2^53, else a string.",
    serialize=serialize_big_int,
    parse_value=parse_big_int,
    parse_literal=parse_big_int_literal,
)

# Registered with the schema through StrawberryConfig.scalar_map.
SCALAR_MAP: dict[object, ScalarDefinition] = {BigInt: BIG_INT_SCALAR}

__all__ = ["JSON", "SCALAR_MAP", "BigInt"]
