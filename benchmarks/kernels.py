"""Kernel benchmarks: numba (parallel, serial) against NumPy, pure Python and native references.

Run from the project root::

    python -m benchmarks.kernels                       # full sizes, 5 repetitions (a few minutes)
    python -m benchmarks.kernels --quick               # small sizes, 3 repetitions (smoke run)
    python -m benchmarks.kernels --kinds monteCarloPi,primeCount --reps 7

For every problem it prints one Markdown table (variant | threads | median time | ratio vs
numba parallel | note), after checking that every variant computed the same result
(equal counts, energies/prices to a relative tolerance). Repetitions are interleaved
(A B C A B C ..., the starting variant rotating) because the machine is shared and noisy,
and the median of the repetitions is reported.

* numba variants run in this process, after a warm-up call (compile/cache load excluded).
* Native references are separate programs that time only their kernel and print
  ``result=... seconds=...``: the C sources in ``benchmarks/c/`` (built here with
  ``gcc -O3 -march=native -fopenmp -ffp-contract=off`` into ``benchmarks/.build/``) run
  with ``OMP_NUM_THREADS`` equal to numba's thread count; primeCount's reference is the
  ``primesieve`` package (``bash benchmarks/setup_native.sh`` installs it), in process.
* Pure Python (and NumPy where the full size is too slow or too big) run a scaled-down
  problem and the time is extrapolated linearly to the full size; the note says so.
* Compile time: per kind, a fresh subprocess imports the module and calls its
  ``warm_up()`` with an empty ``NUMBA_CACHE_DIR`` (compilation), then a second one with
  the same cache directory (cached load).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
C_DIR = Path(__file__).resolve().parent / "c"
BUILD_DIR = Path(__file__).resolve().parent / ".build"
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off"]
"""-ffp-contract=off: GNU C fuses a*b + c into an FMA by default, numba does not; the
references must round like the kernels to give the same counts."""

FASTMATH_BUILDS = ("n_body",)
"""Also built with -ffast-math, as an informational row: what reassociation (vectorised
reductions) would buy; it changes the last bits, so it is checked to a tolerance only."""

KIND_MODULES = {
    "monteCarloPi": "crunchql.compute.monte_carlo_pi",
    "optionPricing": "crunchql.compute.option_pricing",
    "primeCount": "crunchql.compute.prime_count",
    "mandelbrot": "crunchql.compute.mandelbrot",
    "nBody": "crunchql.compute.n_body",
    "kMeans": "crunchql.compute.k_means",
}


class Unavailable(Exception):
    """A variant or a kind that cannot run here (module missing, no compiler, ...)."""


class Mismatch(Exception):
    """Two variants disagree on the result."""


# ---- variants and problems ----------------------------------------------------------------


@dataclass
class Variant:
    """One implementation of a problem.

    ``run()`` returns ``(result, seconds)`` for the size it runs at; ``scale`` is the full
    size over that size (the time is multiplied by it); ``reference()`` gives the numba
    parallel result at the variant's own size, to compare with.
    """

    name: str
    threads: int
    run: Callable[[], tuple[Any, float]]
    note: str = ""
    scale: float = 1.0
    reference: Callable[[], Any] | None = None
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    result: Any = None
    error: str | None = None


@dataclass
class Problem:
    kind: str
    title: str
    variants: list[Variant]
    same: Callable[[Any, Any], bool]
    show: Callable[[Any], str] = str
    notes: list[str] = field(default_factory=list)
    target: float = 1.1
    """The issue's target: numba (first variant) at most this many times the native one."""


NATIVE_PREFIXES = ("C reference", "primesieve.count_primes")


def native_pair(problem: Problem) -> tuple[Variant | None, Variant | None]:
    """(the native reference on all threads, its one-thread run) if present and timed."""
    natives = [v for v in problem.variants if v.name.startswith(NATIVE_PREFIXES) and v.times]
    multi = next((v for v in natives if "1 thread" not in v.name), None)
    single = next((v for v in natives if "1 thread" in v.name), None)
    return multi, single


def targets_table(problems: Sequence[Problem]) -> list[str]:
    """numba vs the native reference: median and best-of-n ratios against the target."""
    lines = [
        "| problem | numba / native, median | numba / native, best of n "
        "| serial / 1-thread native, median | same, CPU time | target | verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for p in problems:
        base = p.variants[0]
        multi, single = native_pair(p)
        if multi is None or not base.times:
            continue
        med = statistics.median(base.times) / statistics.median(multi.times)
        best = min(base.times) / min(multi.times)
        serial = next((v for v in p.variants if v.name == "numba serial" and v.times), None)
        if base.threads == 1:  # a serial-only kernel (SOLAR_SYSTEM)
            serial, single = base, single or multi
        ser = cpu = "-"
        if serial is not None and single is not None:
            ser = f"{statistics.median(serial.times) / statistics.median(single.times):.2f}"
            ratio = statistics.median(serial.cpu_times) / statistics.median(single.cpu_times)
            cpu = "-" if math.isnan(ratio) else f"{ratio:.2f}"
        if med <= p.target:
            verdict = "met"
        elif best <= p.target:
            verdict = "met on best-of-n only (noisy medians)"
        else:
            verdict = "MISSED"
        name = p.title.split(" (")[0]
        lines.append(
            f"| {name} | {med:.2f} | {best:.2f} | {ser} | {cpu} | {p.target:g} | {verdict} |"
        )
    return lines


class Seconds(float):
    """Wall-clock seconds of one run, with ``cpu``: the CPU seconds of the process (all its
    threads) over the same run. On a shared machine the CPU time of a one-thread run does
    not count the time the thread waited for a core, so it is the steadier per-core figure."""

    cpu: float

    def __new__(cls, wall: float, cpu: float = math.nan) -> Seconds:
        obj = super().__new__(cls, wall)
        obj.cpu = cpu
        return obj


def timed(
    fn: Callable[..., Any], *args: Any, post: Callable[[Any], Any] | None = None, **kw: Any
) -> tuple[Any, Seconds]:
    """``(post(fn(*args, **kw)), Seconds of the fn call alone)``."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    result = fn(*args, **kw)
    seconds = Seconds(time.perf_counter() - t0, time.process_time() - c0)
    return (result if post is None else post(result)), seconds


def exact(a: Any, b: Any) -> bool:
    return bool(a == b)


def close(rel: float) -> Callable[[Any, Any], bool]:
    def same(a: Any, b: Any) -> bool:
        a_t = a if isinstance(a, tuple | list) else (a,)
        b_t = b if isinstance(b, tuple | list) else (b,)
        return len(a_t) == len(b_t) and all(
            math.isclose(float(x), float(y), rel_tol=rel, abs_tol=rel)
            for x, y in zip(a_t, b_t, strict=True)
        )

    return same


# ---- native programs ----------------------------------------------------------------------


def build_c(names: Sequence[str]) -> dict[str, Path]:
    """Compile ``benchmarks/c/<name>.c`` into ``benchmarks/.build/<name>``; missing gcc -> {}."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return {}
    BUILD_DIR.mkdir(exist_ok=True)
    out: dict[str, Path] = {}
    for name in names:
        src = C_DIR / f"{name}.c"
        if not src.exists():
            continue
        exe = BUILD_DIR / name
        subprocess.run([gcc, *CFLAGS, str(src), "-o", str(exe), "-lm"], check=True)
        out[name] = exe
        if name in FASTMATH_BUILDS:
            fast = BUILD_DIR / f"{name}_fastmath"
            flags = [*CFLAGS[:-1], "-ffast-math"]
            subprocess.run([gcc, *flags, str(src), "-o", str(fast), "-lm"], check=True)
            out[f"{name}_fastmath"] = fast
    return out


def c_runner(exe: Path, args: Sequence[Any], threads: int) -> Callable[[], tuple[Any, float]]:
    """A variant body running ``exe args`` with ``threads`` OpenMP threads.

    The program prints ``result=<r> seconds=<s> ...``; ``r`` is an int, a float or a
    comma-separated tuple of floats.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))

    def run() -> tuple[Any, float]:
        proc = subprocess.run(
            [str(exe), *map(str, args)], env=env, capture_output=True, text=True, check=True
        )
        fields = dict(item.split("=", 1) for item in proc.stdout.split())
        raw = fields["result"]
        result: Any
        if "," in raw:
            parts = raw.split(",")
            if all(x.isdigit() for x in parts):
                result = tuple(int(x) for x in parts)
            else:
                result = tuple(float(x) for x in parts)
        elif raw.lstrip("-").isdigit():
            result = int(raw)
        else:
            result = float(raw)
        return result, Seconds(float(fields["seconds"]), float(fields.get("cpu", "nan")))

    return run


# ---- the kinds ----------------------------------------------------------------------------


def _import(kind: str) -> Any:
    try:
        return importlib.import_module(KIND_MODULES[kind])
    except ImportError as exc:
        raise Unavailable(f"{KIND_MODULES[kind]} is not importable ({exc})") from exc


def _need(module: Any, *names: str) -> None:
    missing = [n for n in names if not hasattr(module, n)]
    if missing:
        raise Unavailable(f"{module.__name__} has no {', '.join(missing)} yet")


def _sci(n: float) -> str:
    """``200000000`` -> ``2*10^8``."""
    if n <= 0:
        return str(n)
    exp = math.floor(math.log10(n))
    mant = n / 10**exp
    if abs(mant - round(mant)) < 1e-9:
        mant_s = str(round(mant))
        return f"10^{exp}" if mant_s == "1" else f"{mant_s}*10^{exp}"
    return f"{n:g}"


def _scaled_note(what: str, factor: float, extra: str = "") -> str:
    note = f"scaled down: ran {what}, time x{factor:g} (linear extrapolation)"
    return f"{note}; {extra}" if extra else note


def problems_pi(quick: bool, threads: int, exes: dict[str, Path]) -> list[Problem]:
    m = _import("monteCarloPi")
    seed = 12345
    n = 2 * 10**6 if quick else 2 * 10**8
    n_np = n if quick else 2 * 10**7
    n_py = 2 * 10**4 if quick else 5 * 10**5
    cache: dict[int, int] = {}

    def ref(size: int) -> Callable[[], int]:
        def get() -> int:
            if size not in cache:
                cache[size] = m.count_inside_parallel(size, seed)
            return cache[size]

        return get

    def count_np(size: int) -> int:
        return round(m.estimate_pi_numpy(size, seed)["estimate"] / 4.0 * size)

    def count_py(size: int) -> int:
        return round(m.estimate_pi_python(size, seed)["estimate"] / 4.0 * size)

    variants = [
        Variant("numba parallel", threads, lambda: timed(m.count_inside_parallel, n, seed)),
        Variant("numba serial", 1, lambda: timed(m.count_inside_serial, n, seed)),
        Variant(
            "NumPy (vectorised per block)",
            1,
            lambda: timed(count_np, n_np),
            note=_scaled_note(f"{_sci(n_np)} samples", n / n_np) if n_np != n else "",
            scale=n / n_np,
            reference=ref(n_np),
        ),
        Variant(
            "pure Python",
            1,
            lambda: timed(count_py, n_py),
            note=_scaled_note(f"{_sci(n_py)} samples", n / n_py),
            scale=n / n_py,
            reference=ref(n_py),
        ),
    ]
    if "monte_carlo_pi" in exes:
        exe = exes["monte_carlo_pi"]
        variants.append(
            Variant("C reference (gcc, OpenMP)", threads, c_runner(exe, (n, seed), threads))
        )
        variants.append(Variant("C reference, 1 thread", 1, c_runner(exe, (n, seed), 1)))
    return [
        Problem(
            "monteCarloPi",
            f"monteCarloPi: {_sci(n)} samples, seed {seed} (result: points inside)",
            variants,
            exact,
        )
    ]


def problems_option(quick: bool, threads: int, exes: dict[str, Path]) -> list[Problem]:
    m = _import("optionPricing")
    paths = 2000 if quick else 40_000
    paths_py = 20 if quick else 250
    params = m.validate(
        {
            "spot": 100.0,
            "strike": 100.0,
            "rate": 0.05,
            "volatility": 0.2,
            "maturity": 1.0,
            "optionType": "CALL",
            "style": "ASIAN",
            "paths": paths,
            "steps": 252,
            "seed": 7,
        }
    )
    params_py = dict(params, paths=paths_py)

    def price(fn: Callable[[Any], Any], p: Any) -> tuple[float, float]:
        r = fn(p)
        return (r["price"], r["standardError"])

    variants = [
        Variant("numba parallel", threads, lambda: timed(price, m.price_option_parallel, params)),
        Variant("numba serial", 1, lambda: timed(price, m.price_option_serial, params)),
        Variant(
            "NumPy (vectorised per block)", 1, lambda: timed(price, m.price_option_numpy, params)
        ),
        Variant(
            "pure Python",
            1,
            lambda: timed(price, m.price_option_python, params_py),
            note=_scaled_note(f"{paths_py} pairs", paths / paths_py),
            scale=paths / paths_py,
            reference=lambda: price(m.price_option_parallel, params_py),
        ),
    ]
    if "option_pricing" in exes:
        exe = exes["option_pricing"]
        setup = m.make_setup(params)
        args = (
            setup.seed,
            setup.paths,
            setup.steps,
            int(setup.asian),
            repr(setup.phi),
            repr(setup.strike),
            repr(setup.x0),
            repr(setup.a),
            repr(setup.b),
            repr(setup.c_y),
            repr(setup.e_x),
            setup.block_pairs,
        )

        def c_price(threads_c: int) -> Callable[[], tuple[Any, float]]:
            run = c_runner(exe, args, threads_c)

            def go() -> tuple[Any, float]:
                sums, secs = run()  # the 5 sums, added in block order with fsum semantics
                import numpy as np

                rows = np.array(sums).reshape(-1, 5)
                r = m.summarize(setup, rows, setup.paths)
                return (r["price"], r["standardError"]), secs

            return go

        variants.append(Variant("C reference (gcc, OpenMP)", threads, c_price(threads)))
        variants.append(Variant("C reference, 1 thread", 1, c_price(1)))
    return [
        Problem(
            "optionPricing",
            f"optionPricing: ASIAN call, {paths} antithetic pairs x 252 steps "
            f"({_sci(paths * 252)} pair-steps), seed 7 (result: price, standard error)",
            variants,
            close(1e-9),
            show=lambda r: f"price {r[0]!r} +- {r[1]:.6g}",
        )
    ]


def problems_prime(quick: bool, threads: int, exes: dict[str, Path]) -> list[Problem]:
    m = _import("primeCount")
    _need(m, "count_primes", "count_primes_numpy", "count_primes_python")
    try:
        import primesieve
    except ImportError:
        primesieve = None
    limits = [10**7] if quick else [10**9, 10**10]
    lim_np = 10**7 if quick else 10**8
    lim_py = 10**5 if quick else 10**7
    LOGLOG = "a slight under-estimate: sieve work grows as n log log n"
    known = {10**5: 9592, 10**7: 664579, 10**8: 5761455, 10**9: 50847534, 10**10: 455052511}
    out = []
    for limit in limits:

        def ps_run(lim: int, nt: int) -> Callable[[], tuple[Any, float]]:
            def go() -> tuple[Any, float]:
                primesieve.set_num_threads(nt)
                return timed(primesieve.count_primes, lim)

            return go

        variants = [
            Variant("numba parallel", threads, lambda lim=limit: timed(m.count_primes, lim, True)),
            Variant("numba serial", 1, lambda lim=limit: timed(m.count_primes, lim, False)),
            Variant(
                "NumPy (odd-only sieve, whole range)",
                1,
                lambda lim=min(lim_np, limit): timed(m.count_primes_numpy, lim),
                note=_scaled_note(f"limit {_sci(lim_np)}", limit / lim_np, LOGLOG)
                if lim_np < limit
                else "",
                scale=limit / min(lim_np, limit),
                reference=lambda lim=min(lim_np, limit): known[lim],
            ),
            Variant(
                "pure Python (odd-only sieve)",
                1,
                lambda: timed(m.count_primes_python, lim_py),
                note=_scaled_note(f"limit {_sci(lim_py)}", limit / lim_py, LOGLOG),
                scale=limit / lim_py,
                reference=lambda: known[lim_py],
            ),
        ]
        if primesieve is not None:
            variants.append(
                Variant(
                    "primesieve.count_primes",
                    threads,
                    ps_run(limit, threads),
                    note=f"set_num_threads({threads})",
                )
            )
            variants.append(Variant("primesieve.count_primes, 1 thread", 1, ps_run(limit, 1)))
        problem = Problem(
            target=3.0,
            kind="primeCount",
            title=f"primeCount: pi({_sci(limit)}) (result: prime count)",
            variants=variants,
            same=exact,
        )
        if primesieve is None:
            problem.notes.append(
                "primesieve is not installed: run `bash benchmarks/setup_native.sh`."
            )
        if limit in known:
            problem.notes.append(f"expected pi({_sci(limit)}) = {known[limit]}")
        out.append(problem)
    return out


def _checksum(counts: Any) -> tuple[int, int]:
    """(sum of counts, sum of count_k * (k % 1000003 + 1) mod 2**64), as mandelbrot.c prints."""
    import numpy as np

    flat = np.asarray(counts, dtype=np.uint64).ravel()
    weights = np.arange(flat.size, dtype=np.uint64) % np.uint64(1000003) + np.uint64(1)
    return int(flat.sum()), int((flat * weights).sum())


def problems_mandel(quick: bool, threads: int, exes: dict[str, Path]) -> list[Problem]:
    m = _import("mandelbrot")
    _need(m, "escape_counts", "escape_counts_numpy", "escape_counts_python", "_geometry")
    side, max_iter = (256, 200) if quick else (2048, 1000)
    side_np = side if quick else 512
    side_py = 32 if quick else 128
    window = m.DEFAULT_WINDOW

    def counts(fn: Callable[..., Any], s: int, **kw: Any) -> tuple[Any, float]:
        return timed(fn, s, s, max_iter, window, post=_checksum, **kw)

    def ref(s: int) -> Callable[[], tuple[int, int]]:
        return lambda: counts(m.escape_counts, s, parallel=True)[0]

    px = "pixels"
    variants = [
        Variant("numba parallel", threads, lambda: counts(m.escape_counts, side, parallel=True)),
        Variant("numba serial", 1, lambda: counts(m.escape_counts, side, parallel=False)),
        Variant(
            "NumPy (all pixels step together)",
            1,
            lambda: counts(m.escape_counts_numpy, side_np),
            note=_scaled_note(f"{side_np}x{side_np} {px} of the same window", (side / side_np) ** 2)
            if side_np != side
            else "",
            scale=(side / side_np) ** 2,
            reference=ref(side_np),
        ),
        Variant(
            "pure Python",
            1,
            lambda: counts(m.escape_counts_python, side_py),
            note=_scaled_note(
                f"{side_py}x{side_py} {px} of the same window", (side / side_py) ** 2
            ),
            scale=(side / side_py) ** 2,
            reference=ref(side_py),
        ),
    ]
    if "mandelbrot" in exes:
        geo = m._geometry(side, side, window)
        args = (side, side, max_iter, *map(repr, geo))
        exe = exes["mandelbrot"]
        variants.append(Variant("C reference (gcc, OpenMP)", threads, c_runner(exe, args, threads)))
        variants.append(Variant("C reference, 1 thread", 1, c_runner(exe, args, 1)))
    return [
        Problem(
            "mandelbrot",
            f"mandelbrot: {side}x{side} pixels, maxIterations {max_iter}, window {window} "
            "(result: sum of escape counts, position-weighted checksum)",
            variants,
            exact,
        )
    ]


def _advance_python(
    pos: list[list[float]], vel: list[list[float]], mu: list[float], dt: float, steps: int
) -> None:
    """The Benchmarks Game's ``advance`` in pure Python, operation for operation like
    ``n_body._advance_symplectic_euler`` (the same bits)."""
    n = len(mu)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    for _ in range(steps):
        for i, j in pairs:
            pi_, pj, vi, vj = pos[i], pos[j], vel[i], vel[j]
            dx = pi_[0] - pj[0]
            dy = pi_[1] - pj[1]
            dz = pi_[2] - pj[2]
            d2 = dx * dx + dy * dy + dz * dz
            mag = dt / (d2 * math.sqrt(d2))
            mj = mu[j] * mag
            vi[0] -= dx * mj
            vi[1] -= dy * mj
            vi[2] -= dz * mj
            mi = mu[i] * mag
            vj[0] += dx * mi
            vj[1] += dy * mi
            vj[2] += dz * mi
        for p, v in zip(pos, vel, strict=True):
            p[0] += dt * v[0]
            p[1] += dt * v[1]
            p[2] += dt * v[2]


def problems_nbody(quick: bool, threads: int, exes: dict[str, Path]) -> list[Problem]:
    import numpy as np

    m = _import("nBody")
    _need(
        m,
        "solar_system",
        "random_cluster",
        "advance_symplectic_euler",
        "simulate",
        "simulate_numpy",
        "simulate_python",
        "energy",
        "SOFTENING",
    )
    out = []

    def c_state(
        mode: int,
        pos: Any,
        vel: Any,
        mu: Any,
        steps: int,
        dt: float,
        eps2: float,
        tag: str,
        nt: int,
        soft: float,
        exe: str = "n_body",
    ) -> Callable[[], tuple[Any, float]]:
        BUILD_DIR.mkdir(exist_ok=True)
        path = BUILD_DIR / f"n_body_{tag}.bin"
        path.write_bytes(
            np.concatenate([np.ravel(pos), np.ravel(vel), np.ravel(mu)]).astype("<f8").tobytes()
        )
        run = c_runner(exes[exe], (mode, mu.size, steps, repr(dt), repr(eps2), path), nt)

        def go() -> tuple[Any, float]:
            flat, secs = run()
            state = np.array(flat).reshape(2, mu.size, 3)
            return m.energy(state[0], state[1], mu, soft), secs

        return go

    def solar_problem() -> Problem:
        # -- SOLAR_SYSTEM: the Benchmarks Game problem (serial kernel: 5 bodies) --
        s_steps = 10**4 if quick else 10**6
        steps_py = 10**3 if quick else 10**5
        dt = 0.01
        s_pos, s_vel, s_mu = m.solar_system()

        def euler(n_steps: int) -> tuple[float, float]:
            return timed(
                m.advance_symplectic_euler,
                s_pos,
                s_vel,
                s_mu,
                n_steps,
                dt,
                post=lambda st: m.energy(st[0], st[1], s_mu, 0.0),
            )

        def euler_py(n_steps: int) -> tuple[float, float]:
            p_l, v_l, mu_l = s_pos.tolist(), s_vel.tolist(), s_mu.tolist()
            _, secs = timed(_advance_python, p_l, v_l, mu_l, dt, n_steps)
            return m.energy(np.array(p_l), np.array(v_l), s_mu, 0.0), secs

        variants = [
            Variant(
                "numba (the job's kernel, serial)",
                1,
                lambda: euler(s_steps),
                note="no parallel kernel: 10 pairs per step are too few to share out",
            ),
            Variant(
                "pure Python (Benchmarks Game loop)",
                1,
                lambda: euler_py(steps_py),
                note=_scaled_note(f"{_sci(steps_py)} steps", s_steps / steps_py),
                scale=s_steps / steps_py,
                reference=lambda: euler(steps_py)[0],
            ),
        ]
        if "n_body" in exes:
            variants.append(
                Variant(
                    "C reference (gcc, serial like the kernel)",
                    1,
                    c_state(0, s_pos, s_vel, s_mu, s_steps, dt, 0.0, "solar", 1, 0.0),
                )
            )
        solar = Problem(
            "nBody",
            f"nBody SOLAR_SYSTEM: 5 bodies, {_sci(s_steps)} steps of dt = {dt} "
            "(symplectic Euler; result: final energy)",
            variants,
            close(1e-12),
            show=lambda e: repr(e),
        )
        solar.notes.append(
            "ratio column: relative to the job's serial numba kernel (there is no parallel one). "
            "The Benchmarks Game size, 5*10^7 steps, is 50x this: too long for this run; "
            "the time is linear in steps."
        )
        solar.notes.append("NumPy: not run; 5 bodies are far too few to vectorise over.")
        return solar

    def cluster_problem() -> Problem:
        # -- RANDOM_CLUSTER: all pairs, leapfrog, bodies over threads --
        bodies, steps = (300, 3) if quick else (2000, 20)
        steps_np = 1 if quick else 4
        bodies_py, steps_py = (60, 1) if quick else (300, 2)
        dt, seed, soft = 1e-3, 1, m.SOFTENING
        pos, vel, mu = m.random_cluster(bodies, seed)
        pos_py, vel_py, mu_py = m.random_cluster(bodies_py, seed)
        work = bodies**2 * (steps + 1)  # pair interactions, with the initial accelerations

        def leap(fn: Callable[..., Any], p: Any, v: Any, w: Any, n_steps: int, **kw: Any) -> Any:
            return timed(
                fn,
                p,
                v,
                w,
                n_steps,
                dt,
                soft,
                post=lambda st: m.energy(st[0], st[1], w, soft),
                **kw,
            )

        variants = [
            Variant(
                "numba parallel",
                threads,
                lambda: leap(m.simulate, pos, vel, mu, steps, parallel=True),
            ),
            Variant(
                "numba serial", 1, lambda: leap(m.simulate, pos, vel, mu, steps, parallel=False)
            ),
            Variant(
                "NumPy (all pairs, n x n x 3 arrays)",
                1,
                lambda: leap(m.simulate_numpy, pos, vel, mu, steps_np),
                note=_scaled_note(f"{steps_np} steps", (steps + 1) / (steps_np + 1))
                if steps_np != steps
                else "",
                scale=(steps + 1) / (steps_np + 1),
                reference=lambda: leap(m.simulate, pos, vel, mu, steps_np, parallel=True)[0],
            ),
            Variant(
                "pure Python",
                1,
                lambda: leap(m.simulate_python, pos_py, vel_py, mu_py, steps_py),
                note=_scaled_note(
                    f"{bodies_py} bodies x {steps_py} steps (a different cluster)",
                    work / (bodies_py**2 * (steps_py + 1)),
                    "time per pair interaction",
                ),
                scale=work / (bodies_py**2 * (steps_py + 1)),
                reference=lambda: leap(m.simulate, pos_py, vel_py, mu_py, steps_py, parallel=True)[
                    0
                ],
            ),
        ]
        if "n_body" in exes:
            for name, nt in (("C reference (gcc, OpenMP)", threads), ("C reference, 1 thread", 1)):
                variants.append(
                    Variant(
                        name,
                        nt,
                        c_state(1, pos, vel, mu, steps, dt, soft**2, f"cluster{nt}", nt, soft),
                    )
                )
        if "n_body_fastmath" in exes:
            variants.append(
                Variant(
                    "C, -ffast-math (informational)",
                    threads,
                    c_state(
                        1,
                        pos,
                        vel,
                        mu,
                        steps,
                        dt,
                        soft**2,
                        "clusterfm",
                        threads,
                        soft,
                        "n_body_fastmath",
                    ),
                    note="reassociates the j-sums, so they vectorise; not bitwise, checked to "
                    "1e-11 relative. What numba's fastmath=True (reassoc) could reach",
                )
            )
        return Problem(
            "nBody",
            f"nBody RANDOM_CLUSTER: {bodies} bodies x {steps} steps of dt = {dt}, seed {seed} "
            f"({_sci(work)} pair interactions; kick-drift-kick leapfrog, softening {soft}; "
            "result: final energy)",
            variants,
            close(1e-11),
            show=lambda e: repr(e),
        )

    out.append(solar_problem())
    out.append(cluster_problem())
    return out


def problems_kmeans(quick: bool, threads: int, exes: dict[str, Path]) -> list[Problem]:
    import numba
    import numpy as np

    from crunchql.compute.catalog import K_MEANS

    m = _import("kMeans")
    _need(m, "k_means", "KMeansJob")
    raw = (
        {"n": 20_000, "dimensions": 4, "k": 8, "clusters": 8}
        if quick
        else {"n": 10**6, "dimensions": 8, "k": 16, "clusters": 16}
    )
    params = K_MEANS.parse({**raw, "spread": 0.05, "maxIterations": 20, "seed": 2024})

    def run(nt: int) -> Callable[[], tuple[Any, float]]:
        def go() -> tuple[Any, float]:
            before = numba.get_num_threads()
            numba.set_num_threads(nt)
            try:
                result, secs = timed(m.k_means, params, post=lambda job: job.result())
            finally:
                numba.set_num_threads(before)
            return (result["inertia"], result["iterations"], result["recoveredFraction"]), secs

        return go

    def largest_step(phase: str) -> Callable[[], tuple[Any, float]]:
        """One step at the largest block: n d k at the bound with d = 64, k = 256 (points
        regenerated on every pass). k-means++ is skipped (255 passes): the first k points
        are the centroids, and a Lloyd step costs the same whatever they are."""
        big = K_MEANS.parse({"n": 610_351, "dimensions": 64, "k": 256, "seed": 1})

        def go() -> tuple[Any, float]:
            job = m.KMeansJob(big)
            while job.phase == "generate":
                job.step()
            if phase == "lloyd":
                job.centroids = np.array([job._point(i) for i in range(big.k)])
                job.start_lloyd()
            _, secs = timed(job.step)
            return job.chunk_blocks[phase], secs

        return go

    title = (
        f"kMeans: n {_sci(params.n)}, {params.dimensions} dimensions, k {params.k}, "
        f"{params.max_iterations} iterations at most, seed {params.seed} "
        "(result: inertia, iterations, purity)"
    )
    step_title = (
        "kMeans, the largest step: one block of 4096 points, 64 dimensions, 256 centroids, "
        "points regenerated (result: blocks in the step)"
    )
    return [
        Problem(
            "kMeans",
            title,
            [Variant("numba parallel", threads, run(threads)), Variant("numba serial", 1, run(1))],
            exact,
            target=math.inf,
        ),
        Problem(
            "kMeans",
            step_title,
            [
                Variant("numba parallel, one Lloyd step", threads, largest_step("lloyd")),
                Variant("numba parallel, one k-means++ step", threads, largest_step("seed")),
            ],
            lambda a, b: True,  # different steps: nothing to agree on
            target=math.inf,
        ),
    ]


PROBLEM_BUILDERS: dict[str, Callable[[bool, int, dict[str, Path]], list[Problem]]] = {
    "monteCarloPi": problems_pi,
    "optionPricing": problems_option,
    "primeCount": problems_prime,
    "mandelbrot": problems_mandel,
    "nBody": problems_nbody,
    "kMeans": problems_kmeans,
}


# ---- running ------------------------------------------------------------------------------


def verify(problem: Problem) -> list[str]:
    """Run every variant once (also the warm-up) and check results agree; returns lines."""
    base = problem.variants[0]
    base.result, _ = base.run()
    lines = [f"- {base.name}: {problem.show(base.result)}"]
    for v in problem.variants[1:]:
        try:
            v.result, _ = v.run()
        except Exception as exc:  # a broken reference must not hide the others
            v.error = f"{type(exc).__name__}: {exc}"
            lines.append(f"- {v.name}: FAILED ({v.error})")
            continue
        expected = v.reference() if v.reference is not None else base.result
        ok = problem.same(v.result, expected)
        where = "" if v.reference is None else " (reference at the same reduced size)"
        lines.append(
            f"- {v.name}: {problem.show(v.result)} "
            f"{'==' if ok else '!='} {problem.show(expected)}{where} "
            f"{'OK' if ok else 'MISMATCH'}"
        )
        if not ok:
            v.error = "result mismatch"
    return lines


def measure(problem: Problem, reps: int) -> None:
    live = [v for v in problem.variants if v.error is None]
    for rep in range(reps):
        k = rep % len(live)
        for v in live[k:] + live[:k]:  # interleaved: A B C, B C A, C A B, ...
            result, secs = v.run()
            expected = v.result
            if not problem.same(result, expected):
                raise Mismatch(f"{problem.title}: {v.name} gave {result!r}, then {expected!r}")
            v.times.append(secs * v.scale)
            v.cpu_times.append(getattr(secs, "cpu", math.nan) * v.scale)
            time.sleep(0.02)  # let spinning OpenMP workers of the previous run go idle


def fmt_time(s: float) -> str:
    if s >= 100:
        return f"{s:.0f} s"
    if s >= 1:
        return f"{s:.2f} s"
    return f"{s * 1e3:.1f} ms" if s >= 0.01 else f"{s * 1e3:.2f} ms"


def table(problem: Problem) -> list[str]:
    base_times = problem.variants[0].times
    base = statistics.median(base_times) if base_times else float("nan")
    lines = [
        "| variant | threads | median time | ratio vs numba parallel | note |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for v in problem.variants:
        if v.error is not None or not v.times:
            lines.append(f"| {v.name} | {v.threads} | - | - | not run: {v.error} |")
            continue
        med = statistics.median(v.times)
        spread = f"n={len(v.times)}, {fmt_time(min(v.times))} .. {fmt_time(max(v.times))}"
        note = f"{v.note}; {spread}" if v.note else spread
        lines.append(f"| {v.name} | {v.threads} | {fmt_time(med)} | {med / base:.2f}x | {note} |")
    return lines


# ---- compile times ------------------------------------------------------------------------

_COMPILE_SCRIPT = """
import importlib, json, sys, time
t0 = time.perf_counter()
import numba, numpy
t1 = time.perf_counter()
mod = importlib.import_module(sys.argv[1])
t2 = time.perf_counter()
mod.warm_up()
t3 = time.perf_counter()
print(json.dumps({"numba_import": t1 - t0, "module_import": t2 - t1, "warm_up": t3 - t2}))
"""


def compile_times(kind: str) -> tuple[dict[str, float], dict[str, float]]:
    """(cold, cached) timings of ``import module; warm_up()`` in fresh subprocesses."""
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        out = []
        for _ in range(2):
            proc = subprocess.run(
                [sys.executable, "-c", _COMPILE_SCRIPT, KIND_MODULES[kind]],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out[0], out[1]


# ---- machine ------------------------------------------------------------------------------


def machine_line() -> str:
    import numba
    import numpy as np

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not initialised"
    gcc = "none"
    if shutil.which("gcc"):
        gcc = subprocess.run(
            ["gcc", "-dumpfullversion"], capture_output=True, text=True
        ).stdout.strip()
    try:
        import primesieve

        ps = primesieve.primesieve_version()
        ps = ps.decode() if isinstance(ps, bytes) else ps
    except ImportError:
        ps = "not installed"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: {cpu}; {os.cpu_count()} CPUs ({usable} usable); "
        f"python {platform.python_version()}, numba {numba.__version__}, numpy {np.__version__}; "
        f"threading layer {layer}; NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}, "
        f"get_num_threads()={numba.get_num_threads()}; gcc {gcc}; libprimesieve {ps}; "
        f"load average at start {load}"
    )


def tree_line() -> str:
    """The commit and which kernel modules differ from it (the tree is edited concurrently)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "compute"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "code: not a git checkout"
    changed = sorted(line[3:] for line in dirty if line.strip())
    return f"code: commit {head}; compute/ changes not committed: {', '.join(changed) or 'none'}"


# ---- main ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.kernels", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repetitions")
    parser.add_argument(
        "--kinds",
        default=",".join(KIND_MODULES),
        help=f"comma-separated subset of {','.join(KIND_MODULES)}",
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions (default 5, 3 with --quick)"
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the compile-time measurement"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the raw timings here")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 5)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KIND_MODULES]
    if unknown:
        parser.error(f"unknown kinds {unknown}; choose from {list(KIND_MODULES)}")

    import numba

    threads = numba.get_num_threads()
    shown_args = list(argv if argv is not None else sys.argv[1:])
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print(f"# crunchql kernel benchmarks ({'quick' if args.quick else 'full'}), {started}")
    print(f"command: python -m benchmarks.kernels {' '.join(shown_args)}".rstrip())
    exes = build_c(["monte_carlo_pi", "option_pricing", "mandelbrot", "n_body"])
    if not exes:
        print("note: gcc not found: the C references are skipped")
    failed = False
    report: dict[str, Any] = {"started": started, "reps": reps, "problems": [], "compile": {}}
    problems: list[Problem] = []
    for kind in kinds:
        builder = PROBLEM_BUILDERS.get(kind)
        try:
            if builder is None:
                raise Unavailable("no benchmark for this kind yet")
            problems.extend(builder(args.quick, threads, exes))
        except Unavailable as exc:
            print(f"\n## {kind}\n\nskipped: {exc}")
    # the first parallel call initialises the threading layer; the machine line names it
    for p in problems:
        print(f"\n## {p.title}\n")
        print("results (each variant once, before timing):")
        for line in verify(p):
            print(line)
        if any(v.error == "result mismatch" for v in p.variants):
            print("\nRESULTS DISAGREE: no timings reported for this problem")
            failed = True
            continue
        print("results agree")
        measure(p, reps)
        print()
        for line in table(p):
            print(line)
        for note in p.notes:
            print(f"\nnote: {note}")
        report["problems"].append(
            {
                "kind": p.kind,
                "title": p.title,
                "variants": [
                    {
                        "name": v.name,
                        "threads": v.threads,
                        "times": v.times,
                        "cpu_times": v.cpu_times,
                        "error": v.error,
                        "result": repr(v.result),
                    }
                    for v in p.variants
                ],
            }
        )
    timed_problems = [p for p in problems if p.variants[0].times]
    if timed_problems:
        print("\n## numba against the native references (targets from the issue)\n")
        for line in targets_table(timed_problems):
            print(line)
    if not args.no_compile:
        print("\n## numba compile time (import + warm_up() in a fresh process)\n")
        print("| kind | empty NUMBA_CACHE_DIR (compile) | same cache dir (cached load) | note |")
        print("| --- | ---: | ---: | --- |")
        for kind in kinds:
            try:
                _import(kind)
                cold, warm = compile_times(kind)
            except (Unavailable, subprocess.CalledProcessError) as exc:
                print(f"| {kind} | - | - | not measured: {str(exc).splitlines()[0]} |")
                continue
            report["compile"][kind] = {"cold": cold, "cached": warm}
            c = cold["module_import"] + cold["warm_up"]
            w = warm["module_import"] + warm["warm_up"]
            print(
                f"| {kind} | {fmt_time(c)} | {fmt_time(w)} | import numba+numpy "
                f"{fmt_time(cold['numba_import'])} not included; cold = import "
                f"{fmt_time(cold['module_import'])} + warm_up {fmt_time(cold['warm_up'])} |"
            )
    print()
    print(machine_line())
    print(tree_line())
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
