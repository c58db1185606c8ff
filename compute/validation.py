"""Input validation shared by the kinds: integers, floats, enums and seeds.

Plain Python (no NumPy, no numba): the API process validates with it.

Each helper returns the value converted (``int`` or ``float``) or raises
:class:`~crunchql.compute.base.ParameterError` naming the offending field; the messages are part of
the API (clients show them and tests assert on them).
"""

from __future__ import annotations

import math
import numbers
import secrets
from collections.abc import Mapping
from typing import Any

from crunchql.compute.base import ParameterError
from crunchql.compute.config import MAX_SEED

FLOAT_RANGE_MESSAGE = (
    "{field} must be a finite number in {bracket}{low:g}, {high:g}] (got {value!r})"
)
"""The default out-of-range message of :func:`check_float`."""


def check_int(field: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in ``low .. high``, else :class:`ParameterError` naming ``field``.

    Accepts Python ints, integral floats (``1e6``) and strings of decimal digits (how
    GraphQL ``BigInt`` may arrive); refuses bools, fractions and everything else.
    """
    if isinstance(value, bool):
        raise ParameterError(field, f"{field} must be an integer (got {value!r})")
    # numbers.Integral / numbers.Real also cover NumPy scalars without importing NumPy.
    if isinstance(value, numbers.Integral):
        number = int(value)
    elif (
        isinstance(value, numbers.Real)
        and math.isfinite(float(value))
        and float(value) == int(float(value))
    ):
        number = int(float(value))
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    else:
        raise ParameterError(field, f"{field} must be an integer (got {value!r})")
    if not low <= number <= high:
        raise ParameterError(field, f"{field} must be between {low} and {high} (got {number})")
    return number


def check_float(
    field: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    message: str = FLOAT_RANGE_MESSAGE,
) -> float:
    """``value`` as a float in ``[low, high]`` (``(low, high]`` with ``low_open``), else
    :class:`ParameterError` naming ``field``.

    Accepts Python and NumPy ints and floats; refuses bools, strings and everything else
    with "``field`` must be a number (got ``value!r``)". NaN and infinities are always out
    of range.

    Parameters
    ----------
    field : str
        The input field, for the error.
    value : Any
        The raw input value.
    low, high : float
        The bounds, finite.
    low_open : bool
        Exclude ``low`` itself.
    message : str
        The out-of-range message, a :meth:`str.format` template that may use ``field``,
        ``value``, ``low``, ``high`` and ``bracket`` (``"("`` with ``low_open``, else
        ``"["``); by default :data:`FLOAT_RANGE_MESSAGE`.

    Returns
    -------
    float
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ParameterError(field, f"{field} must be a number (got {value!r})")
    number = float(value)
    low_ok = number > low if low_open else number >= low
    if not (math.isfinite(number) and low_ok and number <= high):
        bracket = "(" if low_open else "["
        raise ParameterError(
            field,
            message.format(field=field, value=value, low=low, high=high, bracket=bracket),
        )
    return number


def check_seed(value: Any) -> int:
    """A validated seed: ``value`` in 0 .. MAX_SEED, or a drawn one when ``value`` is None."""
    if value is None:
        return draw_seed()
    return check_int("seed", value, 0, MAX_SEED)


def draw_seed() -> int:
    """A fresh seed in 0 .. MAX_SEED from the OS's entropy source."""
    return secrets.randbelow(MAX_SEED + 1)


def required_int(raw: Mapping[str, Any], field: str, low: int, high: int) -> int:
    """``raw[field]`` checked by :func:`check_int`; "``field`` is required" when absent."""
    if raw.get(field) is None:
        raise ParameterError(field, f"{field} is required ({low} .. {high})")
    return check_int(field, raw[field], low, high)


def check_enum(raw: Mapping[str, Any], field: str, allowed: tuple[str, ...]) -> str:
    """``raw[field]`` (an enum member or its name) as one of the names ``allowed``."""
    value = raw.get(field)
    value = getattr(value, "name", value)  # accept Python Enum members too
    if value not in allowed:
        raise ParameterError(field, f"{field} must be one of {', '.join(allowed)} (got {value!r})")
    return str(value)
