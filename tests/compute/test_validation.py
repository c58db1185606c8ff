"""The shared input checks: accepted values, refusals and their exact messages."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crunchql.compute.base import ParameterError
from crunchql.compute.validation import check_float, check_int, check_seed


def _refusal(fn, *args, **kwargs) -> ParameterError:  # type: ignore[no-untyped-def]
    with pytest.raises(ParameterError) as info:
        fn(*args, **kwargs)
    return info.value


@pytest.mark.parametrize(
    ("value", "expected"),
    [(5, 5), (np.int64(7), 7), (1e6, 10**6), ("42", 42), (" +3 ", 3), (0, 0), (10**6, 10**6)],
)
def test_check_int_accepts(value: object, expected: int) -> None:
    got = check_int("n", value, 0, 10**6)
    assert got == expected
    assert type(got) is int


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "n must be an integer (got True)"),
        (1.5, "n must be an integer (got 1.5)"),
        (math.inf, "n must be an integer (got inf)"),
        ("1e3", "n must be an integer (got '1e3')"),
        (None, "n must be an integer (got None)"),
        (-1, "n must be between 0 and 10 (got -1)"),
        (11.0, "n must be between 0 and 10 (got 11)"),
    ],
)
def test_check_int_refuses(value: object, message: str) -> None:
    error = _refusal(check_int, "n", value, 0, 10)
    assert error.field == "n"
    assert error.message == message


@pytest.mark.parametrize(
    ("value", "kwargs"),
    [(0.0, {}), (1.0, {}), (1, {}), (np.float32(0.5), {}), (1.0, {"low_open": True})],
)
def test_check_float_accepts(value: object, kwargs: dict) -> None:
    got = check_float("x", value, 0.0, 1.0, **kwargs)
    assert got == float(value)  # type: ignore[arg-type]
    assert type(got) is float


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        ("1", {}, "x must be a number (got '1')"),
        (False, {}, "x must be a number (got False)"),
        (None, {}, "x must be a number (got None)"),
        (-0.5, {}, "x must be a finite number in [0, 1] (got -0.5)"),
        (0.0, {"low_open": True}, "x must be a finite number in (0, 1] (got 0.0)"),
        (math.nan, {}, "x must be a finite number in [0, 1] (got nan)"),
        (math.inf, {}, "x must be a finite number in [0, 1] (got inf)"),
        (
            2,
            {"message": "{field} must be between {low:g} and {high:g} (got {value})"},
            "x must be between 0 and 1 (got 2)",
        ),
    ],
)
def test_check_float_refuses(value: object, kwargs: dict, message: str) -> None:
    error = _refusal(check_float, "x", value, 0.0, 1.0, **kwargs)
    assert error.field == "x"
    assert error.message == message


def test_check_seed() -> None:
    assert check_seed(5) == 5
    drawn = {check_seed(None) for _ in range(5)}
    assert all(0 <= s <= 2**31 - 1 for s in drawn)
    assert len(drawn) > 1
    assert _refusal(check_seed, -1).message == "seed must be between 0 and 2147483647 (got -1)"
