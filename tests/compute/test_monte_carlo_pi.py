"""monteCarloPi: validation, the kernel against the naive reference, statistics, jobs."""

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
from crunchql.compute import monte_carlo_pi as mc
from crunchql.compute.base import ParameterError
from crunchql.compute.catalog import MONTE_CARLO_PI
from tests.compute import naive

ROOT = Path(__file__).resolve().parents[2]


def run_job(params: dict) -> tuple[dict, list[float], list[dict | None]]:
    job = MONTE_CARLO_PI.start(params)
    progress, partials = [job.progress], [job.partial_result()]
    while not job.done:
        job.step()
        progress.append(job.progress)
        partials.append(job.partial_result())
    return job.result(), progress, partials


def test_kernel_equals_naive_reference() -> None:
    # within block 0; the block boundary is checked below
    for seed in (0, 1, 987654321):
        n = 3000
        assert mc.count_inside_serial(n, seed) == naive.naive_pi_count(n, seed, mc.BLOCK)
        assert mc.count_inside_parallel(n, seed) == naive.naive_pi_count(n, seed, mc.BLOCK)


def test_block_boundary_matches_reference() -> None:
    # samples just past one block: block 1 holds 1000 points of stream (seed, 1)
    seed, extra = 5, 1000
    n = mc.BLOCK + extra
    block1 = sum(
        naive.naive_double(seed, 1, 2 * j) ** 2 + naive.naive_double(seed, 1, 2 * j + 1) ** 2 < 1.0
        for j in range(extra)
    )
    assert mc.count_inside_parallel(n, seed) == mc.count_inside_serial(mc.BLOCK, seed) + block1


def test_implementations_agree() -> None:
    n, seed = 20_000, 11
    expected = mc.estimate_pi(n, seed)
    assert mc.estimate_pi_python(n, seed) == expected
    assert mc.estimate_pi_numpy(n, seed) == expected
    assert mc.pi_result(mc.count_inside_serial(n, seed), n) == expected
    n = 3 * mc.BLOCK + 17  # several blocks, last one short
    assert mc.estimate_pi_numpy(n, 3) == mc.estimate_pi(n, 3)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_estimate_within_four_standard_errors(seed: int) -> None:
    result = mc.estimate_pi(5_000_000, seed)
    # exact SE of 4 p_hat with p = pi / 4
    se = 4 * math.sqrt(math.pi / 4 * (1 - math.pi / 4) / 5_000_000)
    assert result["standardError"] == pytest.approx(se, rel=0.01)
    assert abs(result["estimate"] - math.pi) < 4 * se
    assert result["samples"] == 5_000_000


def test_seed_determinism() -> None:
    a = mc.estimate_pi(1_000_003, 42)
    assert mc.estimate_pi(1_000_003, 42) == a
    assert mc.estimate_pi(1_000_003, 43) != a


def test_job_steps_equal_one_shot_and_progress() -> None:
    samples = 3 * config.PI_CHUNK_BLOCKS * mc.BLOCK // 2 + 12345  # two chunks, ragged end
    params = MONTE_CARLO_PI.validate({"samples": samples, "seed": 9})
    result, progress, partials = run_job(params)
    assert result == mc.estimate_pi(samples, 9)
    assert progress[0] == 0.0 and progress[-1] == 1.0
    assert all(a < b for a, b in itertools.pairwise(progress))
    assert len(progress) == 3
    assert partials[0] is None
    assert partials[-1] == result
    for partial in partials[1:]:
        assert set(partial) == {"estimate", "standardError", "samples"}
        assert abs(partial["estimate"] - math.pi) < 5 * partial["standardError"]
    assert partials[1]["samples"] == config.PI_CHUNK_BLOCKS * mc.BLOCK
    json.dumps(result)


def test_done_job_step_is_noop() -> None:
    job = MONTE_CARLO_PI.start({"samples": 10, "seed": 1})
    job.step()
    assert job.done and job.progress == 1.0
    before = job.result()
    job.step()
    assert job.result() == before


def test_result_before_done_raises() -> None:
    job = MONTE_CARLO_PI.start({"samples": 10, "seed": 1})
    with pytest.raises(RuntimeError):
        job.result()


def test_same_result_for_any_thread_count() -> None:
    code = (
        "import json, numba; from compute import monte_carlo_pi as mc;"
        "print(json.dumps([numba.get_num_threads(), mc.estimate_pi(3 * mc.BLOCK + 5, 77)]))"
    )
    outputs = []
    for threads in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads)
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=240,
        )
        outputs.append(json.loads(done.stdout))
    assert [o[0] for o in outputs] == [1, 2]
    assert outputs[0][1] == outputs[1][1] == mc.estimate_pi(3 * mc.BLOCK + 5, 77)


# ---- validation -------------------------------------------------------------------------------


def test_validate_fills_seed() -> None:
    params = MONTE_CARLO_PI.validate({"samples": 1000})
    assert params["samples"] == 1000
    assert 0 <= params["seed"] <= 2**31 - 1
    assert MONTE_CARLO_PI.validate({"samples": "10000000000", "seed": None})["samples"] == 10**10
    assert MONTE_CARLO_PI.validate({"samples": 1e6, "seed": 3}) == {"samples": 1_000_000, "seed": 3}


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ({}, "samples", "samples"),
        ({"samples": 0}, "samples", "between 1 and 10000000000"),
        ({"samples": -5}, "samples", "(got -5)"),
        ({"samples": 10**10 + 1}, "samples", "between 1 and 10000000000"),
        ({"samples": True}, "samples", "integer"),
        ({"samples": 2.5}, "samples", "integer"),
        ({"samples": float("nan")}, "samples", "integer"),
        ({"samples": "12a"}, "samples", "integer"),
        ({"samples": 10, "seed": -1}, "seed", "between 0 and 2147483647"),
        ({"samples": 10, "seed": 2**31}, "seed", "between 0 and 2147483647"),
        ({"samples": 10, "seed": 1.5}, "seed", "integer"),
    ],
)
def test_validate_rejects(raw: dict, field: str, fragment: str) -> None:
    with pytest.raises(ParameterError) as caught:
        MONTE_CARLO_PI.validate(raw)
    assert caught.value.field == field
    assert field in caught.value.message
    assert fragment in caught.value.message


def test_kind_metadata() -> None:
    assert MONTE_CARLO_PI.name == "monteCarloPi"
    assert MONTE_CARLO_PI.description.endswith(".")
    MONTE_CARLO_PI.warm_up()
