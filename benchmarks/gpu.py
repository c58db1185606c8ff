"""GPU kernels (compute/gpu, numba CUDA) against the CPU kernels, at the kinds' bounds.

Run from the project root on a machine with an NVIDIA GPU::

    python -m benchmarks.gpu                 # full sizes, 5 repetitions (1-2 minutes on an H200)
    python -m benchmarks.gpu --quick         # small sizes, 3 repetitions
    python -m benchmarks.gpu --reps 7 --kinds monteCarloPi,mandelbrot

For each problem it first runs both sides once and checks that they agree (equal counts
for monteCarloPi and mandelbrot; optionPricing's per-block sums within the derived bound
of ``compute.gpu.tolerance.sums_tolerance``, and the price and standard error within
what that bound allows), then times them, interleaved, and prints one Markdown table of
medians:

* CPU: the kinds' numba kernel on every core. Where numba's parfors cannot compile the
  ``prange`` kernel (monteCarloPi on Python 3.12: "unexpected cycle in lookup()"), the
  serial kernel runs on contiguous block ranges from one Python thread per core instead
  (it releases the GIL; same blocks, same result); the table says which.
* GPU, end to end: the public call (device allocation, launch, copy of the result back).
* GPU, kernel: the launch on preallocated device memory up to ``cuda.synchronize()``.
* compile: the first GPU call (numba-cuda compiles on first use), once.

In numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) it runs tiny sizes only, to check
this script; those timings mean nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from crunchql.compute import config
from crunchql.compute import mandelbrot as cpu_mandelbrot
from crunchql.compute import monte_carlo_pi as cpu_pi
from crunchql.compute import n_body as cpu_n_body
from crunchql.compute import option_pricing as cpu_option
from crunchql.compute.gpu import compat, tolerance
from crunchql.compute.gpu import mandelbrot as gpu_mandelbrot
from crunchql.compute.gpu import monte_carlo_pi as gpu_pi
from crunchql.compute.gpu import n_body as gpu_n_body
from crunchql.compute.gpu import option_pricing as gpu_option

cuda = compat.cuda
KINDS = ("monteCarloPi", "optionPricing", "mandelbrot", "nBody")
BULB_WINDOW = (-0.1426, -0.1026, 0.7249, 0.7649)
"""Inside the period-3 bulb, off the cardioid and the period-2 disc: every pixel runs all
``maxIterations`` (the CPU kernel's worst case)."""


LONG_CPU_SECONDS = 2.0
"""A problem whose CPU run takes longer is timed 3 times at most (keeps the run short)."""


class Mismatch(Exception):
    """The GPU and CPU results disagree."""


@dataclass
class Problem:
    """One size of one kind: how to run each side, and how to compare their results."""

    kind: str
    title: str
    cpu: Callable[[], Any]
    gpu: Callable[[], Any]
    kernel: Callable[[], None]
    check: Callable[[Any, Any], str]
    cpu_label: str
    times: dict[str, list[float]] = field(default_factory=dict)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def cpu_threads() -> int:
    return numba.get_num_threads()


def split(n_blocks: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous (first, count) ranges covering ``0 .. n_blocks - 1``."""
    parts = max(1, min(parts, n_blocks))
    edges = [n_blocks * k // parts for k in range(parts + 1)]
    return [(edges[k], edges[k + 1] - edges[k]) for k in range(parts)]


# ---- monteCarloPi ---------------------------------------------------------------------------


def pi_cpu_runner() -> tuple[Callable[[int, int], int], str]:
    """The parallel kernel, or the serial one on Python threads where parfors fails."""
    try:
        cpu_pi.count_inside_parallel(16, 0)
        return cpu_pi.count_inside_parallel, f"numba prange, {cpu_threads()} threads"
    except Exception as exc:  # numba's parfors on Python 3.12: AssertionError
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[-1][:60]}"
    pool = ThreadPoolExecutor(cpu_threads())

    def count(samples: int, seed: int) -> int:
        blocks = -(-samples // cpu_pi.BLOCK)
        futures = [
            pool.submit(cpu_pi._count_serial, seed, first, n, samples)
            for first, n in split(blocks, 4 * cpu_threads())
        ]
        return sum(int(f.result()) for f in futures)

    count(16, 0)
    return count, f"serial kernel on {cpu_threads()} Python threads (prange: {reason})"


def pi_problems(sizes: list[int], seed: int = 12345) -> list[Problem]:
    count, label = pi_cpu_runner()
    problems = []
    for samples in sizes:
        blocks = -(-samples // cpu_pi.BLOCK)
        d_out = cuda.device_array(blocks, dtype=np.int64)

        def kernel(d_out: Any = d_out, samples: int = samples) -> None:
            gpu_pi.launch(d_out, seed, 0, samples)
            cuda.synchronize()

        def check(cpu: int, gpu: int) -> str:
            if cpu != gpu:
                raise Mismatch(f"inside-count: CPU {cpu}, GPU {gpu}")
            return f"inside-count {cpu:,} on both"

        problems.append(
            Problem(
                "monteCarloPi",
                f"{samples:.0e} samples, seed {seed}".replace("e+0", "e").replace("e+", "e"),
                lambda samples=samples: count(samples, seed),
                lambda samples=samples: gpu_pi.count_inside(samples, seed),
                kernel,
                check,
                label,
            )
        )
    return problems


# ---- optionPricing --------------------------------------------------------------------------


def option_params(style: str, paths: int, steps: int) -> dict[str, Any]:
    # within the kind's bounds by construction (steps only matters for ASIAN)
    return {
        "spot": 100.0,
        "strike": 100.0,
        "rate": 0.05,
        "volatility": 0.2,
        "maturity": 1.0,
        "optionType": "CALL",
        "style": style,
        "paths": paths,
        "steps": steps,
        "seed": 2024,
    }


def option_cpu_runner() -> tuple[Callable[[cpu_option.Setup], np.ndarray], str]:
    def parallel(setup: cpu_option.Setup) -> np.ndarray:
        sums = np.zeros((setup.blocks, cpu_option.N_SUMS))
        cpu_option._run_kernel(cpu_option._sums_parallel, setup, 0, sums)
        return sums

    probe = cpu_option.make_setup(option_params("ASIAN", 2, 2))
    try:
        parallel(probe)
        return parallel, f"numba prange, {cpu_threads()} threads"
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[-1][:60]}"
    pool = ThreadPoolExecutor(cpu_threads())

    def threaded(setup: cpu_option.Setup) -> np.ndarray:
        sums = np.zeros((setup.blocks, cpu_option.N_SUMS))
        futures = [
            pool.submit(
                cpu_option._run_kernel,
                cpu_option._sums_serial,
                setup,
                first,
                sums[first : first + n],
            )
            for first, n in split(setup.blocks, 4 * cpu_threads())
        ]
        for f in futures:
            f.result()
        return sums

    threaded(probe)
    return threaded, f"serial kernel on {cpu_threads()} Python threads (prange: {reason})"


def setup_args(s: cpu_option.Setup) -> tuple[Any, ...]:
    return (s.seed, 0, s.block_pairs, s.paths, s.steps, s.asian, s.phi, s.strike, s.x0, s.a)


def option_problems(cases: list[tuple[str, int, int]]) -> list[Problem]:
    run_cpu, label = option_cpu_runner()
    problems = []
    for style, paths, steps in cases:
        setup = cpu_option.make_setup(option_params(style, paths, steps))
        args = (*setup_args(setup), setup.b, setup.c_y, setup.e_x)
        d_out = cuda.device_array((setup.blocks, cpu_option.N_SUMS), dtype=np.float64)

        def gpu(setup: cpu_option.Setup = setup, args: tuple[Any, ...] = args) -> np.ndarray:
            first = (*args[:1], 0, setup.blocks, *args[2:])
            return gpu_option.block_sums(*first)

        def kernel(d_out: Any = d_out, args: tuple[Any, ...] = args) -> None:
            gpu_option.launch(d_out, *args)
            cuda.synchronize()

        def check(cpu: np.ndarray, got: np.ndarray, setup: cpu_option.Setup = setup) -> str:
            return compare_option(setup, cpu, got)

        work = setup.paths * setup.steps
        problems.append(
            Problem(
                "optionPricing",
                f"{style} call, {paths:,} pairs x {setup.steps} steps ({work:.1e} pair-steps)",
                lambda setup=setup: run_cpu(setup),
                gpu,
                kernel,
                check,
                label,
            )
        )
    return problems


def compare_option(setup: cpu_option.Setup, cpu: np.ndarray, got: np.ndarray) -> str:
    """Per-block sums within :func:`sums_tolerance`, price and SE within what it allows."""
    pairs = np.minimum(setup.block_pairs, setup.paths - np.arange(setup.blocks) * setup.block_pairs)
    tol = tolerance.sums_tolerance(
        cpu, pairs, setup.steps, setup.strike, setup.x0, setup.a, setup.b, setup.c_y, setup.e_x
    )
    diff = np.abs(got - cpu)
    if not np.all(diff <= tol):
        raise Mismatch(f"per-block sums differ beyond the bound: {np.max(diff / tol):.3g} x")
    expected = cpu_option.summarize(setup, cpu, setup.paths)
    result = cpu_option.summarize(setup, got, setup.paths)
    allowed = tolerance.result_tolerance(
        lambda s: cpu_option.summarize(setup, s, setup.paths), cpu, tol
    )
    for key, limit in allowed.items():
        if abs(result[key] - expected[key]) > limit:
            raise Mismatch(f"{key}: CPU {expected[key]!r}, GPU {result[key]!r}, bound {limit:.3g}")
    price_diff = abs(result["price"] - expected["price"])
    bitwise = int(np.count_nonzero(got == cpu))
    return (
        f"price {expected['price']:.6f} +- {expected['standardError']:.2g}; "
        f"|GPU - CPU| {price_diff:.2g} (bound {allowed['price']:.2g}); "
        f"{bitwise}/{cpu.size} sums bitwise equal; worst sum at "
        f"{np.max(diff / np.maximum(tol, 1e-300)):.2g} of its bound"
    )


# ---- mandelbrot -------------------------------------------------------------------------------


def mandelbrot_problems(cases: list[tuple[int, int, tuple[float, ...], str]]) -> list[Problem]:
    problems = []
    for side, max_iter, window, name in cases:
        geometry = cpu_mandelbrot._geometry(side, side, window)
        d_band = cuda.device_array((side, side), dtype=np.uint32)

        def cpu(side: int = side, max_iter: int = max_iter, window: Any = window) -> np.ndarray:
            return cpu_mandelbrot.escape_counts(side, side, max_iter, window, parallel=True)

        def gpu(side: int = side, max_iter: int = max_iter, window: Any = window) -> np.ndarray:
            return gpu_mandelbrot.escape_counts(side, side, max_iter, window)

        def kernel(
            d_band: Any = d_band, side: int = side, max_iter: int = max_iter, g: Any = geometry
        ) -> None:
            gpu_mandelbrot.launch(d_band, 0, side, max_iter, *g)
            cuda.synchronize()

        def check(cpu: np.ndarray, got: np.ndarray) -> str:
            if not np.array_equal(cpu, got):
                wrong = int(np.count_nonzero(cpu != got))
                raise Mismatch(f"{wrong} of {cpu.size} pixels differ")
            return f"all {cpu.size:,} escape counts equal (sum {int(cpu.sum(dtype=np.int64)):,})"

        problems.append(
            Problem(
                "mandelbrot",
                f"{side}x{side}, {max_iter} iterations, {name}",
                cpu,
                gpu,
                kernel,
                check,
                f"numba prange, {cpu_threads()} threads",
            )
        )
    return problems


# ---- the run ----------------------------------------------------------------------------------


def n_body_problems(cases: list[tuple[int, int]]) -> list[Problem]:
    problems = []
    eps2 = config.SOFTENING**2
    dt = 0.001
    for bodies, steps in cases:
        pos, vel, mu = cpu_n_body.random_cluster(bodies, 1)
        acc = np.empty_like(pos)
        cpu_n_body._accelerations_parallel(pos, mu, eps2, acc)
        start = (pos, vel, acc)
        d_mu = cuda.to_device(mu)

        def cpu(start: Any = start, mu: np.ndarray = mu, steps: int = steps) -> Any:
            p, v, a = (x.copy() for x in start)
            cpu_n_body._leapfrog_parallel(p, v, a, mu, dt, eps2, steps)
            return p, v, a

        def gpu(start: Any = start, mu: np.ndarray = mu, steps: int = steps) -> Any:
            return gpu_n_body.leapfrog(*start, mu, dt, eps2, steps)

        d_state = [cuda.to_device(x) for x in start]

        def kernel(d_state: Any = d_state, d_mu: Any = d_mu, steps: int = steps) -> None:
            # all-pairs work does not depend on the state, so the runs go on from the last
            gpu_n_body.launch_leapfrog(*d_state, d_mu, dt, eps2, steps)
            cuda.synchronize()

        def check(cpu: Any, got: Any, mu: np.ndarray = mu) -> str:
            for name, a, b in zip(
                ("positions", "velocities", "accelerations"), cpu, got, strict=True
            ):
                if not np.array_equal(a, b):
                    raise Mismatch(f"{name}: {int(np.count_nonzero(a != b))} values differ")
            e = cpu_n_body.energy(cpu[0], cpu[1], mu, config.SOFTENING)
            return f"positions, velocities bitwise equal (final energy {e:.12g} on both)"

        problems.append(
            Problem(
                "nBody",
                f"RANDOM_CLUSTER, {bodies} bodies x {steps} steps ({bodies**2 * steps:.1e} pairs)",
                cpu,
                gpu,
                kernel,
                check,
                f"numba prange, {cpu_threads()} threads",
            )
        )
    return problems


def builders(quick: bool) -> dict[str, Callable[[], list[Problem]]]:
    """For each kind, a function that makes its problems (sizes by mode)."""
    sim = compat.SIMULATOR
    default = config.DEFAULT_WINDOW
    asian_bound = config.MAX_PATH_STEPS // config.DEFAULT_STEPS_ASIAN
    if sim:
        pi = [2_000]
        option = [("EUROPEAN", 20, 1), ("ASIAN", 6, 4)]
        mandel = [(16, 50, default, "default window")]
        n_body = [(6, 2)]
    elif quick:
        pi = [10**7, 10**8]
        option = [("EUROPEAN", 10**5, 1), ("ASIAN", 10**4, 252)]
        mandel = [(1024, 1000, default, "default window")]
        n_body = [(1000, 10)]
    else:
        pi = [10**8, 10**9, config.MAX_SAMPLES]
        option = [
            ("EUROPEAN", 10**5, 1),
            ("EUROPEAN", config.MAX_PATHS, 1),
            ("ASIAN", 10**5, 252),
            ("ASIAN", asian_bound, 252),
        ]
        mandel = [
            (1024, 1000, default, "default window"),
            (config.MAX_SIDE, 2048, default, "default window"),
            (1024, 2048, BULB_WINDOW, "inside a period-3 bulb (every pixel iterates fully)"),
        ]
        # the bound is 5000 bodies x 1000 steps; the time per step is constant
        n_body = [(2000, 20), (config.MAX_BODIES, 100)]
    return {
        "monteCarloPi": lambda: pi_problems(pi),
        "optionPricing": lambda: option_problems(option),
        "mandelbrot": lambda: mandelbrot_problems(mandel),
        "nBody": lambda: n_body_problems(n_body),
    }


def fmt(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def run(problem: Problem, reps: int) -> list[str]:
    """Check agreement once, then time ``reps`` interleaved rounds (3 at most when the CPU
    takes over ``LONG_CPU_SECONDS``); the table rows."""
    compile_s, first_gpu = timed(problem.gpu)
    cpu_s, first_cpu = timed(problem.cpu)
    note = problem.check(first_cpu, first_gpu)
    if cpu_s > LONG_CPU_SECONDS:
        reps = min(reps, 3)
    sides: dict[str, Callable[[], Any]] = {
        "cpu": problem.cpu,
        "gpu": problem.gpu,
        "kernel": problem.kernel,
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for rep in range(reps):
        for name in order[rep % 3 :] + order[: rep % 3]:
            elapsed, result = timed(sides[name])
            times[name].append(elapsed)
            if name == "gpu":
                problem.check(first_cpu, result)  # every GPU run, not just the first
    cpu, gpu, kernel = (statistics.median(times[n]) for n in ("cpu", "gpu", "kernel"))
    return [
        f"| {problem.kind} | {problem.title} ({reps} reps) | {fmt(cpu)} | {fmt(gpu)} "
        f"| {fmt(kernel)} | {cpu / gpu:,.3g}x | {fmt(compile_s)} | {note} |"
    ]


def header(args: argparse.Namespace) -> list[str]:
    import importlib.metadata as md

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "-"

    cpu_name = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return [
        f"# crunchql GPU benchmark ({'quick' if args.quick else 'full'}, {args.reps} reps), "
        + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        f"GPU: {compat.device_name()}; CPU: {cpu_name}, numba threads {cpu_threads()} "
        f"(of {os.cpu_count()} cores)",
        f"Python {platform.python_version()}, numba {numba.__version__}, numba-cuda "
        f"{version('numba-cuda')}, NumPy {np.__version__}, CUDA target {cuda.__file__}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repetitions")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds")
    args = parser.parse_args(argv)
    args.reps = args.reps or (3 if args.quick or compat.SIMULATOR else 5)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    if not compat.gpu_available():
        print("no CUDA GPU found (numba.cuda.is_available() is False)", file=sys.stderr)
        return 2
    lines = header(args)
    if compat.SIMULATOR:
        # NumPy scalars wrap modulo 2**64 as the hash intends, but warn
        warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
        lines.append("CUDA SIMULATOR: tiny sizes to check the script; timings mean nothing")
    print("\n".join(lines), flush=True)
    print()
    print(
        "| kind | problem | CPU | GPU end to end | GPU kernel | CPU / GPU | GPU compile "
        "| agreement |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    failed = False
    labels: dict[str, str] = {}
    made = builders(args.quick)
    for kind in kinds:
        try:
            problems = made[kind]()
        except Exception as exc:  # e.g. a CPU kernel that does not compile here
            failed = True
            traceback.print_exc()
            print(f"| {kind} | - | - | - | - | - | - | FAILED to set up: {exc!r:.120} |")
            continue
        for problem in problems:
            labels[problem.kind] = problem.cpu_label
            try:
                rows = run(problem, args.reps)
            except Mismatch as exc:
                failed = True
                rows = [f"| {kind} | {problem.title} | - | - | - | - | - | MISMATCH: {exc} |"]
            except Exception as exc:  # one broken problem must not hide the others' figures
                failed = True
                traceback.print_exc()
                rows = [f"| {kind} | {problem.title} | - | - | - | - | - | FAILED: {exc!r:.120} |"]
            print("\n".join(rows), flush=True)
    print()
    for kind, label in labels.items():
        print(f"CPU side of {kind}: {label}")
    print("medians of the repetitions; 'CPU / GPU' compares the CPU with the GPU end to end")
    if failed:
        print("RESULTS DISAGREE or a problem failed (see the table)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
