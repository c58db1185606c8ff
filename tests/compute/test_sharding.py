"""Shards: a kind's job split into any number of shards, whose partials combine into the
unsplit job's result bit for bit (the promise a sharded calculation makes)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from crunchql.compute import config, sharding
from crunchql.compute.base import Kind
from crunchql.compute.catalog import (
    K_MEANS,
    KINDS,
    MANDELBROT,
    MONTE_CARLO_PI,
    N_BODY,
    OPTION_PRICING,
    PRIME_COUNT,
)

# Sizes small enough for CI, with enough blocks (or rows) to split up to 7 ways.
CASES: dict[str, dict[str, Any]] = {
    "monteCarloPi": {"samples": 7 * config.PI_BLOCK_SAMPLES + 12_345, "seed": 2024},
    "optionPricing": {
        "spot": 100.0, "strike": 95.0, "rate": 0.03, "volatility": 0.25, "maturity": 2.0,
        "optionType": "PUT", "style": "ASIAN", "steps": 50, "paths": 40_001, "seed": 7,
    },
    "optionPricingEuropean": {
        "spot": 100.0, "strike": 110.0, "rate": 0.05, "volatility": 0.2, "maturity": 1.0,
        "optionType": "CALL", "style": "EUROPEAN", "paths": 30_000, "seed": 11,
    },
    "primeCount": {"limit": 10**8 + 7},
    "mandelbrot": {"width": 97, "height": 61, "maxIterations": 300, "xMin": -0.8,
                   "xMax": -0.7, "yMin": 0.05, "yMax": 0.15},
}  # fmt: skip
SPLITTABLE = [
    (MONTE_CARLO_PI, "monteCarloPi"),
    (OPTION_PRICING, "optionPricing"),
    (OPTION_PRICING, "optionPricingEuropean"),
    (PRIME_COUNT, "primeCount"),
    (MANDELBROT, "mandelbrot"),
]


def drain(job: Any) -> dict[str, Any]:
    while not job.done:
        job.step()
    result: dict[str, Any] = job.result()
    return result


def sharded(kind: Kind[Any], params: dict[str, Any], shards: int) -> dict[str, Any]:
    partials = []
    for shard in range(shards):
        job = kind.start_shard(params, shard, shards)
        progress = [job.progress]
        partial = drain(job)
        assert job.progress == 1.0 and progress[0] == 0.0
        # Partials are stored as JSON: they must survive the round trip unchanged.
        partials.append(json.loads(json.dumps(partial)))
    return kind.combine(params, partials)


@pytest.mark.parametrize(("kind", "case"), SPLITTABLE, ids=[case for _, case in SPLITTABLE])
def test_combined_shards_are_the_unsplit_result_bitwise(kind: Kind[Any], case: str) -> None:
    params = kind.validate(CASES[case])
    whole = drain(kind.start(params))
    for shards in (1, 2, 3, 7):
        combined = sharded(kind, params, shards)
        # == on dicts of floats is bitwise for finite floats; repr catches -0.0 and NaN.
        assert combined == whole, (case, shards)
        assert repr(combined) == repr(whole)


def test_sharded_results_are_still_right() -> None:
    # Bitwise equal to a wrong answer would be no comfort: check known truths too.
    primes = sharded(PRIME_COUNT, PRIME_COUNT.validate({"limit": 10**8}), 5)
    assert primes == {"limit": 10**8, "count": 5_761_455}  # pi(10**8)
    pi = sharded(MONTE_CARLO_PI, MONTE_CARLO_PI.validate({"samples": 2**23, "seed": 3}), 4)
    assert abs(pi["estimate"] - 3.141592653589793) < 5 * pi["standardError"]


def test_combine_refuses_partials_that_do_not_tile_the_job() -> None:
    params = MONTE_CARLO_PI.validate(CASES["monteCarloPi"])
    parts = [drain(MONTE_CARLO_PI.start_shard(params, s, 3)) for s in range(3)]
    with pytest.raises(ValueError, match="tile"):
        MONTE_CARLO_PI.combine(params, [parts[0], parts[2]])
    with pytest.raises(ValueError, match="cover"):
        MONTE_CARLO_PI.combine(params, parts[:2])
    option = OPTION_PRICING.validate(CASES["optionPricing"])
    shard = drain(OPTION_PRICING.start_shard(option, 0, 1))
    shard["sums"] = sharding.encode_rows(sharding.decode_rows(shard["sums"], 5)[:-1])
    with pytest.raises(ValueError, match="sums"):
        OPTION_PRICING.combine(option, [shard])


def test_shard_ranges_tile_the_blocks_in_order() -> None:
    for blocks in (1, 2, 7, 100, 9537):
        for shards in {n for n in (1, 2, 3, 64, blocks) if n <= blocks}:
            ranges = [sharding.block_range(blocks, s, shards) for s in range(shards)]
            assert ranges[0][0] == 0 and ranges[-1][1] == blocks
            assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
            sizes = [stop - first for first, stop in ranges]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        sharding.block_range(3, 0, 4)  # more shards than blocks


def test_plan_splits_only_jobs_larger_than_a_shard() -> None:
    pi = MONTE_CARLO_PI
    big = pi.validate({"samples": 10**10, "seed": 1})
    # 10**10 samples at ~2 ns per sample and core: ~20 core-seconds.
    assert pi.plan_shards(big, 2.0) == 10
    assert pi.plan_shards(big, 0.5) == 40
    assert pi.plan_shards(big, 0.0) == 1  # 0 disables splitting
    assert pi.plan_shards(pi.validate({"samples": 1000, "seed": 1}), 2.0) == 1
    # Never more shards than blocks, nor than MAX_SHARDS.
    assert pi.plan_shards(pi.validate({"samples": 3 * 2**20, "seed": 1}), 1e-9) == 3
    assert pi.plan_shards(big, 1e-9) == config.MAX_SHARDS
    # mandelbrot estimates the iterations actually run: the default view escapes fast.
    view = MANDELBROT.validate({"width": 1024, "height": 1024, "maxIterations": 1000})
    assert MANDELBROT.plan_shards(view, 2.0) == 1
    inside = MANDELBROT.validate(
        {
            "width": 2048,
            "height": 2048,
            "maxIterations": 2000,
            "xMin": -0.2,
            "xMax": 0.2,
            "yMin": -0.2,
            "yMax": 0.2,
        }
    )
    assert MANDELBROT.plan_shards(inside, 2.0) > 4  # every pixel runs 2000 iterations


def test_kinds_that_are_not_split_say_so() -> None:
    # nBody: every step needs every body's position from the step before; kMeans: every
    # Lloyd iteration needs every point's assignment (see docs/benchmarks.md).
    splittable = {name for name, kind in KINDS.items() if kind.sharded_kernel() is not None}
    assert splittable == {"monteCarloPi", "optionPricing", "primeCount", "mandelbrot"}
    for kind in (N_BODY, K_MEANS):
        assert kind.plan_shards(kind.validate(_minimal(kind)), 1e-9) == 1
        with pytest.raises(ValueError, match="not split"):
            kind.start_shard(kind.validate(_minimal(kind)), 0, 2)


def _minimal(kind: Kind[Any]) -> dict[str, Any]:
    if kind is N_BODY:
        return {"preset": "SOLAR_SYSTEM", "steps": 10, "dt": 1.0}
    return {"n": 100, "dimensions": 2, "k": 3}


def test_only_plans_that_run_a_kernel_go_to_the_kernel_thread() -> None:
    # The runner plans every claimed calculation of a splittable kind on the worker's
    # event loop unless the kind's plan computes: mandelbrot renders a coarse estimate;
    # the others divide a cost known from the parameters.
    computing = {name for name, kind in KINDS.items() if kind.plan_shards_computes()}
    assert computing == {"mandelbrot"}
