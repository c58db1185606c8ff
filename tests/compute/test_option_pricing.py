"""optionPricing: closed forms, the kernel against the naive reference, statistics, jobs."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crunchql.compute import config
from crunchql.compute import option_pricing as op
from crunchql.compute.base import ParameterError
from crunchql.compute.catalog import OPTION_PRICING
from tests.compute import naive

ROOT = Path(__file__).resolve().parents[2]

BASE = {
    "spot": 100.0,
    "strike": 100.0,
    "rate": 0.05,
    "volatility": 0.2,
    "maturity": 1.0,
    "optionType": "CALL",
    "style": "EUROPEAN",
    "paths": 100_000,
    "seed": 1,
}


def params(**changes: object) -> dict:
    return OPTION_PRICING.validate({**BASE, **changes})


def run_job(p: dict) -> tuple[dict, list[float], list[dict | None]]:
    job = OPTION_PRICING.start(p)
    progress, partials = [job.progress], [job.partial_result()]
    while not job.done:
        job.step()
        progress.append(job.progress)
        partials.append(job.partial_result())
    return job.result(), progress, partials


# ---- closed forms --------------------------------------------------------------------------


def test_black_scholes_textbook_values() -> None:
    # Hull, Options, Futures and Other Derivatives, Example 15.6: c = 4.76, p = 0.81
    assert op.black_scholes_price(42, 40, 0.1, 0.2, 0.5, "CALL") == pytest.approx(4.76, abs=0.005)
    assert op.black_scholes_price(42, 40, 0.1, 0.2, 0.5, "PUT") == pytest.approx(0.81, abs=0.005)
    # the classic S = K = 100, r = 5 %, sigma = 20 %, T = 1 call: 10.4506
    assert op.black_scholes_price(100, 100, 0.05, 0.2, 1, "CALL") == pytest.approx(
        10.450583572185565, rel=1e-12
    )


def test_black_scholes_parity_and_limits() -> None:
    for s, k, r, v, t in [(42, 40, 0.1, 0.2, 0.5), (80, 100, -0.01, 0.5, 3.0), (1, 2, 0.0, 1, 10)]:
        c = op.black_scholes_price(s, k, r, v, t, "CALL")
        p = op.black_scholes_price(s, k, r, v, t, "PUT")
        assert c - p == pytest.approx(s - k * math.exp(-r * t), abs=1e-12 * s)
    # deep in the money: intrinsic value of the forward
    assert op.black_scholes_price(200, 100, 0.05, 0.01, 1, "CALL") == pytest.approx(
        200 - 100 * math.exp(-0.05), rel=1e-12
    )
    assert op.black_scholes_price(200, 100, 0.05, 0.01, 1, "PUT") < 1e-12


def test_geometric_asian_closed_form() -> None:
    for option_type in ("CALL", "PUT"):
        one = op.geometric_asian_price(100, 95, 0.03, 0.3, 2, option_type, 1)
        assert one == pytest.approx(op.black_scholes_price(100, 95, 0.03, 0.3, 2, option_type))
    # averaging lowers the volatility: the geometric Asian call is cheaper than the European
    assert op.geometric_asian_price(100, 100, 0.05, 0.2, 1, "CALL", 12) < op.black_scholes_price(
        100, 100, 0.05, 0.2, 1, "CALL"
    )


def test_geometric_asian_closed_form_matches_naive_simulation() -> None:
    p = params(style="ASIAN", steps=6, paths=3000, seed=4)
    _ys, xs = naive.naive_option_samples(
        *(p[k] for k in ("spot", "strike", "rate", "volatility", "maturity")),
        p["optionType"],
        p["style"],
        p["paths"],
        p["steps"],
        p["seed"],
        1024,
    )
    n = len(xs)
    mean = sum(xs) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1) / n)
    expected = op.geometric_asian_price(100, 100, 0.05, 0.2, 1, "CALL", 6) * math.exp(0.05)
    assert abs(mean - expected) < 4 * se


# ---- the kernel against the references ----------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"style": "EUROPEAN", "optionType": "CALL", "paths": 23},
        {"style": "EUROPEAN", "optionType": "PUT", "paths": 23, "strike": 110.0},
        {"style": "ASIAN", "optionType": "CALL", "paths": 21, "steps": 7},
        {"style": "ASIAN", "optionType": "PUT", "paths": 21, "steps": 3, "rate": -0.02},
    ],
)
def test_kernel_equals_naive_reference(changes: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "OPTION_BLOCK_PATHS", 4)  # several blocks and a short one
    p = params(**changes)
    setup = op.make_setup(p)
    assert setup.block_pairs == 4 and setup.blocks > 1
    ys, xs = naive.naive_option_samples(
        *(p[k] for k in ("spot", "strike", "rate", "volatility", "maturity")),
        p["optionType"],
        p["style"],
        p["paths"],
        p["steps"],
        p["seed"],
        4,
    )
    control = setup.e_x if p["style"] == "ASIAN" else None
    price, se = naive.naive_option_price(ys, xs, setup.discount, control)
    for result in (op.price_option_serial(p), op.price_option_parallel(p), run_job(p)[0]):
        assert result["price"] == pytest.approx(price, rel=1e-12)
        assert result["standardError"] == pytest.approx(se, rel=1e-9)
    assert op.price_option_python(p) == op.price_option_serial(p)
    numpy_result = op.price_option_numpy(p)
    assert numpy_result["price"] == pytest.approx(price, rel=1e-12)


def test_serial_parallel_python_identical() -> None:
    p = params(style="ASIAN", steps=12, paths=1500, seed=8)
    a = op.price_option_parallel(p)
    assert op.price_option_serial(p) == a
    assert op.price_option_python(p) == a
    assert op.price_option(p) == a


# ---- statistics -----------------------------------------------------------------------------


CASES = [
    (100.0, 100.0, 0.05, 0.2, 1.0),  # at the money
    (100.0, 80.0, 0.03, 0.25, 0.5),  # call in, put out of the money
    (100.0, 130.0, -0.01, 0.4, 2.0),  # call out, put in the money, negative rate
    (42.0, 40.0, 0.1, 0.2, 0.5),  # Hull
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("option_type", ["CALL", "PUT"])
def test_european_within_four_standard_errors(case: tuple, option_type: str) -> None:
    s, k, r, v, t = case
    p = params(
        spot=s,
        strike=k,
        rate=r,
        volatility=v,
        maturity=t,
        optionType=option_type,
        paths=200_000,
        seed=hash(case) & 0xFFFF,
    )
    result = op.price_option(p)
    bs = op.black_scholes_price(s, k, r, v, t, option_type)
    assert result["analyticPrice"] == bs
    assert 0 < result["standardError"] < 0.01 * max(bs, 1.0)
    assert abs(result["price"] - bs) < 4 * result["standardError"]
    half = result["price"] - result["confidenceLow"]
    assert half == pytest.approx(1.959964 * result["standardError"], rel=1e-6)
    assert result["confidenceHigh"] - result["price"] == pytest.approx(half, rel=1e-9)


def test_european_steps_do_not_matter() -> None:
    assert op.price_option(params(steps=1)) == op.price_option(params(steps=50))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("style", ["EUROPEAN", "ASIAN"])
def test_put_call_parity(case: tuple, style: str) -> None:
    s, k, r, v, t = case
    common = {
        "spot": s,
        "strike": k,
        "rate": r,
        "volatility": v,
        "maturity": t,
        "style": style,
        "paths": 20_000,
        "steps": 12,
        "seed": 5,
    }
    call = op.price_option(params(**common, optionType="CALL"))
    put = op.price_option(params(**common, optionType="PUT"))
    if style == "EUROPEAN":
        forward_value = s - k * math.exp(-r * t)
    else:  # E[A] = S/n sum exp(r t_k), so C - P = e^{-rT} (E[A] - K)
        n = 12
        mean_a = s / n * sum(math.exp(r * t * i / n) for i in range(1, n + 1))
        forward_value = math.exp(-r * t) * (mean_a - k)
    tolerance = 4 * (call["standardError"] + put["standardError"])
    assert abs(call["price"] - put["price"] - forward_value) < tolerance


@pytest.mark.parametrize("case", CASES)
def test_asian_bounds(case: tuple) -> None:
    s, k, r, v, t = case
    common = {
        "spot": s,
        "strike": k,
        "rate": r,
        "volatility": v,
        "maturity": t,
        "style": "ASIAN",
        "paths": 4000,
        "steps": 52,
        "seed": 6,
    }
    call = op.price_option(params(**common, optionType="CALL"))
    put = op.price_option(params(**common, optionType="PUT"))
    assert call["analyticPrice"] is None and put["analyticPrice"] is None
    geo_call = op.geometric_asian_price(s, k, r, v, t, "CALL", 52)
    geo_put = op.geometric_asian_price(s, k, r, v, t, "PUT", 52)
    # G <= A pathwise: geometric call <= arithmetic call, arithmetic put <= geometric put
    assert geo_call <= call["price"] + 4 * call["standardError"]
    assert put["price"] - 4 * put["standardError"] <= geo_put
    if r >= 0:  # averaging over earlier dates cannot beat the European call
        assert call["price"] - 4 * call["standardError"] <= op.black_scholes_price(
            s, k, r, v, t, "CALL"
        )
    assert call["standardError"] > 0.0 and put["standardError"] > 0.0


def test_asian_standard_error_is_honest() -> None:
    # the spread of independent estimates matches the reported standard error
    prices, errors = [], []
    for seed in range(20):
        result = op.price_option(params(style="ASIAN", steps=12, paths=2000, seed=seed))
        prices.append(result["price"])
        errors.append(result["standardError"])
    mean = sum(prices) / len(prices)
    spread = math.sqrt(sum((p - mean) ** 2 for p in prices) / (len(prices) - 1))
    typical = sum(errors) / len(errors)
    assert 0.5 * typical < spread < 1.6 * typical  # chi-square(19) 99.9 % range


def test_one_path() -> None:
    result = op.price_option(params(paths=1))
    assert result["standardError"] == 0.0
    assert result["confidenceLow"] == result["price"] == result["confidenceHigh"]
    json.dumps(op.price_option(params(paths=1, style="ASIAN")))


def test_seed_determinism() -> None:
    p = params(style="ASIAN", steps=10, paths=3000, seed=1)
    assert op.price_option(p) == op.price_option(dict(p))
    assert op.price_option(p) != op.price_option({**p, "seed": 2})


# ---- jobs -----------------------------------------------------------------------------------


def test_job_steps_equal_one_shot_and_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "OPTION_CHUNK_PATH_STEPS", 8 * 1024 * 20)
    p = params(style="ASIAN", steps=20, paths=50_000, seed=3)
    result, progress, partials = run_job(p)
    assert len(progress) > 3
    assert result == op.price_option(p)
    assert progress[0] == 0.0 and progress[-1] == 1.0
    assert all(a < b for a, b in itertools.pairwise(progress))
    assert partials[0] is None and partials[-1] == result
    keys = {"price", "standardError", "confidenceLow", "confidenceHigh", "analyticPrice"}
    for partial in partials[1:]:
        assert set(partial) == keys
        assert partial["confidenceLow"] <= partial["price"] <= partial["confidenceHigh"]
    json.dumps(result)


def test_same_result_for_any_thread_count() -> None:
    p = params(style="ASIAN", steps=30, paths=9000, seed=12)
    code = (
        "import json, sys, numba; from crunchql.compute.catalog import OPTION_PRICING;"
        "p = json.loads(sys.argv[1]); job = OPTION_PRICING.start(p)\n"
        "while not job.done: job.step()\n"
        "print(json.dumps([numba.get_num_threads(), job.result()]))"
    )
    outputs = []
    for threads in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads)
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps(p)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=240,
        )
        outputs.append(json.loads(done.stdout))
    assert [o[0] for o in outputs] == [1, 2]
    assert outputs[0][1] == outputs[1][1] == op.price_option(p)


# ---- validation -------------------------------------------------------------------------------


def test_validate_defaults() -> None:
    raw = {k: v for k, v in BASE.items() if k != "seed"}
    p = OPTION_PRICING.validate(raw)
    assert p["steps"] == 1 and 0 <= p["seed"] <= 2**31 - 1
    assert OPTION_PRICING.validate({**raw, "style": "ASIAN"})["steps"] == 252
    assert OPTION_PRICING.validate({**raw, "steps": None, "seed": None})["steps"] == 1
    p = OPTION_PRICING.validate({**BASE, "rate": -0.005, "spot": 5, "paths": 10.0})
    assert p["rate"] == -0.005 and p["spot"] == 5.0 and p["paths"] == 10
    assert isinstance(p["spot"], float) and isinstance(p["paths"], int)


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"spot": 0.0}, "spot", "spot must be"),
        ({"spot": -1.0}, "spot", "(0, 1e+09]"),
        ({"spot": float("inf")}, "spot", "finite"),
        ({"spot": None}, "spot", "required"),
        ({"spot": "100"}, "spot", "number"),
        ({"strike": 0.0}, "strike", "strike must be"),
        ({"strike": float("nan")}, "strike", "finite"),
        ({"rate": float("nan")}, "rate", "rate must be a finite number in [-1, 1]"),
        ({"rate": float("-inf")}, "rate", "finite"),
        ({"rate": 1.5}, "rate", "[-1, 1]"),
        ({"volatility": 0.0}, "volatility", "(0, 5]"),
        ({"volatility": 5.01}, "volatility", "(0, 5]"),
        ({"volatility": True}, "volatility", "number"),
        ({"maturity": 0.0}, "maturity", "(0, 100]"),
        ({"maturity": 101.0}, "maturity", "(0, 100]"),
        ({"optionType": "STRADDLE"}, "optionType", "CALL, PUT"),
        ({"optionType": None}, "optionType", "CALL, PUT"),
        ({"style": "AMERICAN"}, "style", "EUROPEAN, ASIAN"),
        ({"paths": 0}, "paths", "paths must be between 1 and 10000000 (got 0)"),
        ({"paths": 10**7 + 1}, "paths", "between 1 and 10000000"),
        ({"paths": 1.5}, "paths", "integer"),
        ({"paths": None}, "paths", "required"),
        ({"steps": 0}, "steps", "steps must be between 1 and 10000"),
        ({"steps": 10_001}, "steps", "between 1 and 10000"),
        ({"steps": False}, "steps", "integer"),
        ({"style": "ASIAN", "paths": 10**7, "steps": 10**4}, "paths", "paths * steps"),
        ({"seed": -1}, "seed", "between 0 and 2147483647"),
        ({"seed": 2**31}, "seed", "between 0 and 2147483647"),
    ],
)
def test_validate_rejects(changes: dict, field: str, fragment: str) -> None:
    with pytest.raises(ParameterError) as caught:
        OPTION_PRICING.validate({**BASE, **changes})
    assert caught.value.field == field
    assert field in caught.value.message
    assert fragment in caught.value.message


def test_european_ignores_cost_bound() -> None:
    p = OPTION_PRICING.validate({**BASE, "paths": 10**7, "steps": 10**4})
    assert op.make_setup(p).steps == 1


def test_kind_metadata() -> None:
    assert OPTION_PRICING.name == "optionPricing"
    assert OPTION_PRICING.description.endswith(".")
    OPTION_PRICING.warm_up()
