"""The CUDA kernels (compute/gpu) give the CPU kernels' results.

They run in one worker process (tests/compute/gpu_child.py): on a real GPU when numba
finds one, else in numba's CUDA simulator; ``CRUNCHQL_GPU_TESTS=device`` insists on a GPU
(the device check sets it, so a missing driver fails instead of quietly simulating) and
``CRUNCHQL_GPU_TESTS=simulator`` forces the simulator. The simulator runs every CUDA
thread as a Python thread, so its sizes are tiny: a short stream block reached through
``first_block`` stands for the long ones. On a GPU the sizes grow and include known
truths measured with the CPU kernels.

Expected values come from the serial CPU kernels, which the CPU tests prove equal to the
parallel ones and to the naive references (the serial ones also compile on Python 3.12,
where numba's parfors reject the parallel monteCarloPi kernel).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import pytest

from crunchql.compute import config
from crunchql.compute import mandelbrot as cpu_mandelbrot
from crunchql.compute import monte_carlo_pi as cpu_pi
from crunchql.compute import n_body as cpu_n_body
from crunchql.compute import option_pricing as cpu_option
from crunchql.compute.gpu.tolerance import EPS, relative_bound, result_tolerance, sums_tolerance
from tests.compute import gpu_child

MODE_VARIABLE = "CRUNCHQL_GPU_TESTS"
CALL_TIMEOUT = 300.0
"""Seconds for one kernel call in the worker: a cold CUDA compile, or the simulator on a
loaded 2-core machine."""


def _gpu_present() -> bool:
    """Whether numba finds a CUDA GPU, asked in a fresh process without the simulator."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    probe = "from numba import cuda; print(cuda.is_available())"
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    return done.returncode == 0 and done.stdout.strip().endswith("True")


class Gpu:
    """Calls into the worker process: ``gpu.call("mandelbrot", "escape_counts", ...)``."""

    def __init__(self, pool: ProcessPoolExecutor, mode: str) -> None:
        self.pool = pool
        self.mode = mode

    @property
    def device(self) -> bool:
        return self.mode == "device"

    def call(self, module: str, function: str, *args: Any, **kwargs: Any) -> Any:
        future = self.pool.submit(gpu_child.call, module, function, *args, **kwargs)
        return future.result(timeout=CALL_TIMEOUT)


@pytest.fixture(scope="module")
def gpu() -> Iterator[Gpu]:
    mode = os.environ.get(MODE_VARIABLE) or ("device" if _gpu_present() else "simulator")
    assert mode in {"device", "simulator"}, f"{MODE_VARIABLE} must be device or simulator"
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        1, mp_context=context, initializer=gpu_child.init, initargs=(mode,)
    ) as pool:
        info = pool.submit(gpu_child.info).result(timeout=CALL_TIMEOUT)
        assert info["simulator"] == (mode == "simulator"), info
        assert info["available"], f"no CUDA device: {info}"
        print(f"CUDA kernels run on: {info}")
        yield Gpu(pool, mode)


# ---- monteCarloPi --------------------------------------------------------------------------


def cpu_block_counts(seed: int, first_block: int, n_blocks: int, samples: int) -> list[int]:
    return [
        int(cpu_pi._count_serial(seed, block, 1, samples))
        for block in range(first_block, first_block + n_blocks)
    ]


def test_pi_short_block_equals_cpu(gpu: Gpu) -> None:
    # block 3 of a run of 3 blocks + 700 points: the block index enters the stream key
    samples = 3 * cpu_pi.BLOCK + 700
    for seed in (0, 7, 2**31 - 1):
        counts = gpu.call("monte_carlo_pi", "count_blocks", seed, 3, 1, samples)
        assert counts.dtype == np.int64
        assert counts.tolist() == cpu_block_counts(seed, 3, 1, samples)


def test_pi_total_equals_cpu_for_any_thread_count(gpu: Gpu) -> None:
    samples, seed = (2 * 10**8, 12345) if gpu.device else (1_500, 42)
    expected = cpu_pi.count_inside_serial(samples, seed)
    for threads in (1, 7, 32) if not gpu.device else (64, 256, 1024):
        assert gpu.call("monte_carlo_pi", "count_inside", samples, seed, threads) == expected
    if gpu.device:
        assert expected == 157_078_206  # measured with the CPU kernels and the C reference


@pytest.mark.parametrize("seed", [3, 99])
def test_pi_per_block_counts_equal_cpu(gpu: Gpu, seed: int) -> None:
    # on a GPU: 40 full blocks and a short one; in the simulator: the short block 6
    if gpu.device:
        samples, first, n = 40 * cpu_pi.BLOCK + 12_345, 0, 41
    else:
        samples, first, n = 6 * cpu_pi.BLOCK + 300, 6, 1
    counts = gpu.call("monte_carlo_pi", "count_blocks", seed, first, n, samples)
    assert counts.tolist() == cpu_block_counts(seed, first, n, samples)


# ---- optionPricing ---------------------------------------------------------------------------


def option_params(**changes: Any) -> dict[str, Any]:
    base = {
        "spot": 100.0,
        "strike": 95.0,
        "rate": 0.03,
        "volatility": 0.25,
        "maturity": 1.0,
        "optionType": "CALL",
        "style": "ASIAN",
        "paths": 13,
        "steps": 5,
        "seed": 3,
    }
    base.update(changes)
    return base  # valid by construction: make_setup reads the validated fields


def compare_option(gpu: Gpu, params: dict[str, Any], first_block: int = 0) -> None:
    setup = cpu_option.make_setup(params)
    n_blocks = setup.blocks - first_block
    cpu = np.zeros((n_blocks, cpu_option.N_SUMS))
    cpu_option._run_kernel(cpu_option._sums_serial, setup, first_block, cpu)
    got = gpu.call(
        "option_pricing",
        "block_sums",
        setup.seed,
        first_block,
        n_blocks,
        setup.block_pairs,
        setup.paths,
        setup.steps,
        setup.asian,
        setup.phi,
        setup.strike,
        setup.x0,
        setup.a,
        setup.b,
        setup.c_y,
        setup.e_x,
    )
    assert got.shape == cpu.shape
    if not gpu.device:
        # the simulator's exp/log/sin/cos are the CPU kernel's own (libm): bitwise
        assert np.array_equal(got, cpu)
        return
    pairs = np.minimum(
        setup.block_pairs,
        setup.paths - np.arange(first_block, setup.blocks) * setup.block_pairs,
    )
    tol = sums_tolerance(
        cpu, pairs, setup.steps, setup.strike, setup.x0, setup.a, setup.b, setup.c_y, setup.e_x
    )
    assert np.all(np.abs(got - cpu) <= tol), np.max(np.abs(got - cpu) / tol)
    if first_block == 0:
        expected = cpu_option.summarize(setup, cpu, setup.paths)
        result = cpu_option.summarize(setup, got, setup.paths)
        allowed = result_tolerance(lambda s: cpu_option.summarize(setup, s, setup.paths), cpu, tol)
        # the bound is worst-case but must still say something: far below the MC error
        assert allowed["price"] < 1e-3 * expected["standardError"]
        for key, limit in allowed.items():
            assert abs(result[key] - expected[key]) <= limit, key


@pytest.mark.parametrize(
    "changes",
    [
        {},  # ASIAN call, one short block; pair 1 starts at an odd normal (sine branch)
        {"optionType": "PUT", "steps": 4, "paths": 6},
        {"style": "EUROPEAN", "optionType": "PUT", "paths": 21, "steps": None},
    ],
)
def test_option_sums_equal_cpu(gpu: Gpu, changes: dict[str, Any]) -> None:
    if gpu.device:  # full blocks on a GPU
        changes = {**changes, "paths": 20_000 if changes.get("style") == "EUROPEAN" else 3_000}
        changes.setdefault("steps", 252)
    compare_option(gpu, option_params(**changes))


def test_option_later_block_equals_cpu(gpu: Gpu) -> None:
    # the last, short block of a run of 2 full blocks + 9 pairs: stream (seed, 2)
    params = option_params(style="EUROPEAN", steps=None, paths=2 * 1024 + 9, seed=17)
    compare_option(gpu, params, first_block=2)


def test_option_sums_do_not_depend_on_threads(gpu: Gpu) -> None:
    setup = cpu_option.make_setup(option_params(paths=10, steps=3))
    args = (setup.seed, 0, 1, setup.block_pairs, setup.paths, setup.steps, setup.asian)
    args += (setup.phi, setup.strike, setup.x0, setup.a, setup.b, setup.c_y, setup.e_x)
    one = gpu.call("option_pricing", "block_sums", *args, threads=1)
    three = gpu.call("option_pricing", "block_sums", *args, threads=3)
    assert np.array_equal(one, three)


def test_option_tolerance_is_tight_enough_to_fail() -> None:
    # the bound on real GPUs: ~2*10**4 ulp (4e-12 relative) for a 252-step path, ~40 ulp
    # for one step, so an error of 1e-9 relative (far below any Monte Carlo error) is caught
    setup = cpu_option.make_setup(option_params(steps=252))
    rho = relative_bound(setup.steps, setup.x0, setup.a, setup.b)
    assert 100 * EPS < rho < 1e-11
    assert relative_bound(1, setup.x0, setup.a, setup.b) < 100 * EPS


# ---- mandelbrot ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "window",
    [
        cpu_mandelbrot.DEFAULT_WINDOW,
        (-0.7465, -0.7445, 0.1095, 0.1115),  # near the boundary: long, sensitive orbits
        (-2.0, 0.5, -1.0, 1.0),  # the real axis on a pixel row: mirrored rows
    ],
)
def test_mandelbrot_counts_equal_cpu(gpu: Gpu, window: tuple[float, ...]) -> None:
    width, height, max_iter = (1024, 768, 1000) if gpu.device else (24, 17, 80)
    expected = cpu_mandelbrot.escape_counts(width, height, max_iter, window, parallel=False)
    got = gpu.call("mandelbrot", "escape_counts", width, height, max_iter, window)
    assert got.dtype == np.uint32
    assert np.array_equal(got, expected)


def test_mandelbrot_band_equals_cpu(gpu: Gpu) -> None:
    width, height, max_iter = 19, 14, 60
    geometry = cpu_mandelbrot._geometry(width, height, cpu_mandelbrot.DEFAULT_WINDOW)
    expected = np.zeros((height, width), dtype=np.uint32)
    cpu_mandelbrot._escape_rows_serial(expected, 5, 11, max_iter, *geometry)
    got = np.zeros((height, width), dtype=np.uint32)
    got = gpu.call("mandelbrot", "escape_rows", got, 5, 11, max_iter, *geometry, (4, 4))
    assert np.array_equal(got, expected)  # rows outside the band untouched too


def test_mandelbrot_known_total(gpu: Gpu) -> None:
    if not gpu.device:
        pytest.skip("2048 x 2048 x 1000 needs a GPU (the simulator would take hours)")
    counts = gpu.call("mandelbrot", "escape_counts", 2048, 2048, 1000)
    # measured with the CPU kernels; a fused multiply-add gives 740,481,500
    assert int(counts.sum(dtype=np.int64)) == 740_480_562


# ---- nBody RANDOM_CLUSTER ----------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 3])
def test_n_body_leapfrog_equals_cpu(gpu: Gpu, threads: int) -> None:
    # in the simulator 7 bodies in tiles of 3: tiles end mid-cluster and body i sits in
    # every position of a tile; on a GPU 1000 bodies
    bodies, steps = (1000, 20) if gpu.device else (7, 3)
    if gpu.device:
        threads *= 32
    pos, vel, mu = cpu_n_body.random_cluster(bodies, 5)
    eps2 = config.SOFTENING**2
    acc = np.empty_like(pos)
    cpu_n_body._accelerations_serial(pos, mu, eps2, acc)
    got_acc = gpu.call("n_body", "accelerations", pos, mu, eps2, threads)
    assert np.array_equal(got_acc, acc)

    got = gpu.call("n_body", "leapfrog", pos, vel, acc, mu, 0.001, eps2, steps, threads)
    cpu_n_body._leapfrog_serial(pos, vel, acc, mu, 0.001, eps2, steps)
    for name, mine, theirs in zip(
        ("positions", "velocities", "accelerations"), got, (pos, vel, acc), strict=True
    ):
        assert np.array_equal(mine, theirs), name
    assert cpu_n_body.energy(got[0], got[1], mu, config.SOFTENING) == cpu_n_body.energy(
        pos, vel, mu, config.SOFTENING
    )


# ---- the runner's GPU jobs (compute/gpu/jobs.py): what a `--device gpu` worker stores --------


def cpu_run(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    from crunchql.compute.catalog import KINDS

    job = KINDS[kind].start(KINDS[kind].validate(params))
    while not job.done:
        job.step()
    return job.result()


def cpu_shard(kind: str, params: dict[str, Any], shard: int, shards: int) -> dict[str, Any]:
    from crunchql.compute.catalog import KINDS

    job = KINDS[kind].start_shard(KINDS[kind].validate(params), shard, shards)
    while not job.done:
        job.step()
    return job.result()


JOB_CASES = {
    "monteCarloPi": ({"samples": 2_500, "seed": 5}, {"samples": 10**8, "seed": 5}),
    "optionPricing": (
        option_params(paths=40, steps=6, seed=11),
        option_params(paths=50_000, steps=64, seed=11),
    ),
    "mandelbrot": (
        {"width": 12, "height": 10, "maxIterations": 60, "xMin": -2.0, "xMax": 0.5,
         "yMin": -1.1, "yMax": 1.1},
        {"width": 1024, "height": 768, "maxIterations": 500, "xMin": -2.0, "xMax": 0.5,
         "yMin": -1.1, "yMax": 1.1},
    ),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(JOB_CASES))
def test_a_gpu_job_stores_the_cpu_jobs_result(gpu: Gpu, kind: str) -> None:
    """Same shape, and the same values: bitwise for the integer kinds (and for every kind
    in the simulator, whose libm is the CPU's); optionPricing on a GPU within the bound."""
    from crunchql.compute.catalog import KINDS

    small, large = JOB_CASES[kind]
    params = KINDS[kind].validate(large if gpu.device else small)
    expected = cpu_run(kind, params)
    got = gpu.call("jobs", "run", kind, params)
    assert set(got) == set(expected)
    if kind == "optionPricing" and gpu.device:
        setup = cpu_option.make_setup(params)
        sums = np.zeros((setup.blocks, cpu_option.N_SUMS))
        cpu_option._run_kernel(cpu_option._sums_serial, setup, 0, sums)
        pairs = np.minimum(
            setup.block_pairs, setup.paths - np.arange(setup.blocks) * setup.block_pairs
        )
        tol = sums_tolerance(
            sums, pairs, setup.steps, setup.strike, setup.x0, setup.a, setup.b, setup.c_y,
            setup.e_x,
        )  # fmt: skip
        allowed = result_tolerance(lambda s: cpu_option.summarize(setup, s, setup.paths), sums, tol)
        for key, limit in allowed.items():
            assert abs(got[key] - expected[key]) <= limit, key
    else:
        assert got == expected


def test_gpu_shards_combine_with_cpu_shards_into_the_unsplit_result(gpu: Gpu) -> None:
    """A split run whose shards ran on both kinds of worker: a GPU shard's partial is a
    CPU shard's, so the combination is the unsplit result (the GPU shard is the short
    last one, so that the simulator stays quick)."""
    from crunchql.compute.catalog import KINDS

    cases = {
        # two stream blocks, the second 100 points long
        "monteCarloPi": {"samples": cpu_pi.BLOCK + 100, "seed": 8},
        # 4096 steps: 64 pairs per block, so two blocks, the second one pair
        "optionPricing": option_params(paths=65, steps=4096, seed=2),
        "mandelbrot": {"width": 9, "height": 8, "maxIterations": 40},
    }
    for kind, raw in cases.items():
        params = KINDS[kind].validate(raw)
        expected = cpu_run(kind, params)
        partials = [
            cpu_shard(kind, params, 0, 2),
            gpu.call("jobs", "run_shard", kind, params, 1, 2),
        ]
        assert partials[1] == cpu_shard(kind, params, 1, 2) or gpu.device, kind
        combined = KINDS[kind].combine(params, partials)
        if kind == "optionPricing" and gpu.device:
            assert combined["price"] == pytest.approx(expected["price"], rel=1e-12)
        else:
            assert combined == expected, kind
