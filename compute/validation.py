"""Input validation shared by the kinds: integers, floats and seeds.

Each helper returns the value converted (``int`` or ``float``) or raises
:class:`~compute.base.ParameterError` naming the offending field; the messages are part of
the API (clients show them and tests assert on them).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from crunchql.compute.base import ParameterError
from crunchql.compute.config import MAX_SEED
from crunchql.compute.random import draw_seed

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
    if isinstance(value, int | np.integer) or (
        isinstance(value, float | np.floating) and math.isfinite(value) and value == int(value)
    ):
        number = int(value)
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
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
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
