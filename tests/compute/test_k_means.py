"""kMeans: the data and the clustering against the naive reference, known cases (purity,
monotone inertia), determinism over threads, chunks and caching, jobs, validation."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crunchql.compute import config
from crunchql.compute import k_means as km
from crunchql.compute.base import ParameterError
from crunchql.compute.catalog import K_MEANS
from crunchql.compute.params.k_means import KMeansParams
from tests.compute.naive import naive_kmeans, naive_kmeans_data

ROOT = Path(__file__).resolve().parents[2]
EPS = 2.0**-52


def params(**raw: Any) -> KMeansParams:
    return K_MEANS.parse({"seed": 7, **raw})


def run(p: KMeansParams, **kwargs: Any) -> km.KMeansJob:
    return km.k_means(p, **kwargs)


def hexed(result: dict[str, Any]) -> dict[str, Any]:
    """The result with every float spelled exactly (for bitwise comparisons)."""
    return {
        **result,
        "inertia": float(result["inertia"]).hex(),
        "centroids": [[float(x).hex() for x in row] for row in result["centroids"]],
        "recoveredFraction": float(result["recoveredFraction"]).hex(),
    }


# ---- against the naive reference --------------------------------------------------------------


def test_points_and_labels_match_the_reference() -> None:
    n, d = km.BLOCK + 300, 3  # two blocks, the second short
    p = params(n=n, dimensions=d, k=4, clusters=3, spread=0.2, maxIterations=1)
    job = run(p)
    points, labels = naive_kmeans_data(n, d, 3, 0.2, 7, km.BLOCK)
    assert job.labels.tolist() == labels
    # Box-Muller through numba's and CPython's libm may differ in the last bit of a normal;
    # times spread 0.2 that is below 1e-16, on coordinates of order 1.
    np.testing.assert_allclose(job.points.reshape(n, d), np.array(points), rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    "raw",
    [
        {"n": km.BLOCK + 500, "dimensions": 2, "k": 4, "clusters": 4, "spread": 0.15},
        {"n": 3000, "dimensions": 3, "k": 6, "clusters": 3, "spread": 0.3, "maxIterations": 7},
        {"n": 900, "dimensions": 1, "k": 3, "clusters": 5, "spread": 0.05},
        {"n": 600, "dimensions": 5, "k": 1, "clusters": 2},
    ],
)
def test_clustering_matches_the_reference(raw: dict[str, Any]) -> None:
    p = params(**raw)
    job = run(p)
    result = job.result()
    points, labels = naive_kmeans_data(p.n, p.dimensions, p.clusters, p.spread, p.seed, km.BLOCK)
    expected, history = naive_kmeans(points, labels, p.k, p.clusters, p.max_iterations, p.seed)
    assert result["iterations"] == expected["iterations"]
    assert result["converged"] is expected["converged"]
    assert result["k"] == p.k
    assert result["recoveredFraction"] == expected["recoveredFraction"]
    # Same assignments; the sums behind the means and the inertia differ only in order
    # (blocks, then the blocks' partials): relative error at most ~n * eps.
    tolerance = 4 * p.n * EPS
    np.testing.assert_allclose(job.inertia_history, history, rtol=tolerance)
    np.testing.assert_allclose(result["centroids"], expected["centroids"], rtol=tolerance)
    assert result["inertia"] == job.inertia_history[-1]


# ---- known cases --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_well_separated_clusters_are_recovered(seed: int) -> None:
    # Five centres in the unit cube of 6 dimensions lie ~1 apart; a spread of 0.002 puts
    # every point within ~0.01 of its centre, so each true cluster is one found cluster.
    p = params(n=5000, dimensions=6, k=5, clusters=5, spread=0.002, seed=seed)
    job = run(p)
    result = job.result()
    assert result["recoveredFraction"] == 1.0
    assert result["converged"] and result["iterations"] <= 5
    # Each centroid is its cluster's mean: within a few spread / sqrt(points) of the centre.
    for centroid in result["centroids"]:
        nearest = np.min(np.linalg.norm(job.centres - np.array(centroid), axis=1))
        assert nearest < 6 * 0.002 * math.sqrt(6 / (5000 / 5 / 2))


def test_inertia_never_increases() -> None:
    # Overlapping clusters and more centroids than clusters: many iterations.
    p = params(n=20_000, dimensions=2, k=12, clusters=3, spread=0.25, maxIterations=200)
    job = run(p)
    history = job.inertia_history
    assert len(history) > 10
    # Lloyd's steps cannot increase the inertia; only rounding of sums of n terms can.
    slack = p.n * EPS
    assert all(b <= a * (1 + slack) for a, b in itertools.pairwise(history))
    assert history[-1] < history[0]


def test_more_centroids_than_distinct_points() -> None:
    # spread 0: every point sits on its centre; once both centres are taken every D^2 is 0.
    job = run(params(n=50, dimensions=2, k=5, clusters=2, spread=0.0))
    result = job.result()
    # The mean of m equal coordinates is that coordinate up to rounding (~1e-16 here).
    assert result["inertia"] < 50 * 2 * (4 * EPS) ** 2 and result["recoveredFraction"] == 1.0
    assert len(result["centroids"]) == 5 and result["converged"]
    tiny = run(params(n=2, dimensions=1, k=256, clusters=1)).result()
    assert len(tiny["centroids"]) == 256 and tiny["recoveredFraction"] == 1.0


# ---- determinism --------------------------------------------------------------------------------


def test_same_result_for_any_thread_count() -> None:
    raw = {"n": 3 * km.BLOCK + 17, "dimensions": 3, "k": 7, "clusters": 4, "spread": 0.3}
    code = (
        "import json, sys, numba; from crunchql.compute import k_means as km;"
        "from crunchql.compute.catalog import K_MEANS; p = K_MEANS.parse(json.loads(sys.argv[1]));"
        "a = km.k_means(p).result(); b = km.k_means(p, cache_coordinates=0).result();"
        "h = lambda r: [float(x).hex() for row in r['centroids'] for x in row] + "
        "[float(r['inertia']).hex(), r['iterations'], r['recoveredFraction']];"
        "print(json.dumps([numba.get_num_threads(), h(a), h(b)]))"
    )
    outputs = []
    for threads in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps({**raw, "seed": 5})],
            cwd=ROOT,
            env=dict(os.environ, NUMBA_NUM_THREADS=threads),
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        outputs.append(json.loads(done.stdout))
    assert [o[0] for o in outputs] == [1, 2]
    assert outputs[0][1] == outputs[1][1] == outputs[0][2] == outputs[1][2]


def test_chunking_and_caching_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    p = params(n=2 * km.BLOCK + 5, dimensions=4, k=6, clusters=3, spread=0.2)
    whole = run(p)
    monkeypatch.setattr(config, "KMEANS_CHUNK_TERMS", 1)  # one block per step
    chunked = run(p, cache_coordinates=0)
    assert chunked.chunk_blocks == {"generate": 1, "seed": 1, "lloyd": 1}
    assert hexed(chunked.result()) == hexed(whole.result())
    assert chunked.inertia_history == whole.inertia_history


def test_steps_are_bounded_at_the_largest_inputs() -> None:
    # One step is at most max(one block, KMEANS_CHUNK_TERMS) terms whatever the input (the
    # time of the largest block is measured in docs/benchmarks.md). Inputs too large to
    # cache also regenerate their points on every pass.
    regenerate = config.KMEANS_GENERATE_TERMS
    largest_block = km.BLOCK * config.MAX_KMEANS_DIMENSIONS * (config.MAX_KMEANS_K + regenerate)
    for raw, cached in (
        ({"n": 10**7, "dimensions": 64, "k": 15}, False),
        ({"n": 610_351, "dimensions": 64, "k": 256}, False),
        ({"n": 10**7, "dimensions": 1, "k": 256}, True),
    ):
        job = km.KMeansJob(params(**raw))
        assert job.cached is cached
        extra = 0 if cached else regenerate
        d, k = job.params.dimensions, job.params.k
        costs = {"generate": regenerate, "seed": 1 + extra, "lloyd": k + extra}
        for phase, cost in costs.items():
            terms = job.chunk_blocks[phase] * km.BLOCK * d * cost
            assert terms <= max(config.KMEANS_CHUNK_TERMS, largest_block)


# ---- the job ------------------------------------------------------------------------------------


def test_job_progress_and_result() -> None:
    job = K_MEANS.start(K_MEANS.validate({"n": 2 * km.BLOCK, "dimensions": 2, "k": 3, "seed": 1}))
    with pytest.raises(RuntimeError):
        job.result()
    seen = [job.progress]
    while not job.done:
        job.step()
        seen.append(job.progress)
    assert seen == sorted(seen) and seen[0] == 0.0 and seen[-1] == 1.0
    assert job.partial_result() is None
    result = job.result()
    assert set(result) == {
        "k",
        "iterations",
        "converged",
        "inertia",
        "centroids",
        "recoveredFraction",
    }
    assert len(result["centroids"]) == 3 and all(len(row) == 2 for row in result["centroids"])
    job.step()
    assert job.result() == result
    json.dumps(result, allow_nan=False)


def test_kind_warms_up() -> None:
    assert K_MEANS.name == "kMeans" and K_MEANS.description.endswith(".")
    K_MEANS.warm_up()


# ---- validation ---------------------------------------------------------------------------------


def test_validate_fills_defaults() -> None:
    stored = K_MEANS.validate({"n": 100, "dimensions": 2, "k": 4, "seed": None})
    assert stored == {
        "n": 100, "dimensions": 2, "k": 4, "clusters": 4, "spread": 0.05,
        "maxIterations": 100, "seed": stored["seed"],
    }  # fmt: skip
    assert 0 <= stored["seed"] <= config.MAX_SEED
    assert K_MEANS.validate(stored) == stored  # what a worker re-reads
    # The largest work allowed, exactly at the bound.
    assert K_MEANS.validate({"n": 10**7, "dimensions": 50, "k": 20, "seed": 1})["n"] == 10**7


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"dimensions": 2, "k": 2}, "n"),
        ({"n": 1, "dimensions": 2, "k": 2}, "n"),
        ({"n": 10**7 + 1, "dimensions": 1, "k": 1}, "n"),
        ({"n": 10, "dimensions": 0, "k": 2}, "dimensions"),
        ({"n": 10, "dimensions": 65, "k": 2}, "dimensions"),
        ({"n": 10, "dimensions": 2}, "k"),
        ({"n": 10, "dimensions": 2, "k": 0}, "k"),
        ({"n": 10, "dimensions": 2, "k": 257}, "k"),
        ({"n": 10, "dimensions": 2, "k": 2, "clusters": 0}, "clusters"),
        ({"n": 10, "dimensions": 2, "k": 2, "clusters": 257}, "clusters"),
        ({"n": 10, "dimensions": 2, "k": 2, "spread": -0.1}, "spread"),
        ({"n": 10, "dimensions": 2, "k": 2, "spread": 10.5}, "spread"),
        ({"n": 10, "dimensions": 2, "k": 2, "spread": math.nan}, "spread"),
        ({"n": 10, "dimensions": 2, "k": 2, "spread": "wide"}, "spread"),
        ({"n": 10, "dimensions": 2, "k": 2, "maxIterations": 0}, "maxIterations"),
        ({"n": 10, "dimensions": 2, "k": 2, "maxIterations": 1001}, "maxIterations"),
        ({"n": 10, "dimensions": 2, "k": 2, "seed": -1}, "seed"),
        ({"n": 10, "dimensions": 2.5, "k": 2}, "dimensions"),
        ({"n": 10**7, "dimensions": 64, "k": 16}, "n"),  # n * dimensions * k > 10**10
    ],
)
def test_validate_rejects(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ParameterError) as info:
        K_MEANS.validate(raw)
    assert info.value.field == field and field in info.value.message
