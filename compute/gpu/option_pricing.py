"""optionPricing on a CUDA GPU: one thread per antithetic pair, per-block sums in CPU order.

The paths are those of :mod:`crunchql.compute.option_pricing`: block ``b`` (at most
``block_pairs`` pairs) uses stream ``(seed, b)``; step ``k`` of its pair ``p`` uses normal
``q = p * steps + k``, the cosine (even ``q``) or sine (odd ``q``) branch of Box-Muller on
doubles ``2 (q >> 1)`` and ``2 (q >> 1) + 1``. CUDA block ``j`` simulates stream block
``first_block + j``: its threads take pairs ``p = t, t + threads, ...`` and store
``dY = Y - c_y`` and ``dX = X - e_x`` in shared memory; thread 0 then adds them up in pair
order, exactly as the CPU kernel's loop does, and writes the block's 5 sums. Every
multiply and add is rounded on its own (:mod:`.compat`), so the only operations that may
round differently from the CPU kernel are libdevice's ``exp``, ``log``, ``cos`` and
``sin`` (``sqrt`` and division are correctly rounded on both).

* In the simulator those are the CPU's own libm functions: the sums are bitwise the CPU's.
* On a GPU they differ by at most a few ulp per call; :func:`sums_tolerance` bounds the
  resulting difference of every per-block sum (derivation in its docstring), and the
  price's follows from it (see ``benchmarks/gpu.py``).

Entry points: :func:`block_sums` (the CPU kernel's arguments), :func:`sums_tolerance`,
:func:`warm_up`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numba import cuda

from crunchql.compute.config import OPTION_BLOCK_PATHS
from crunchql.compute.gpu.compat import SIMULATOR, add, mul
from crunchql.compute.gpu.stream import normal_pair, stream_key

N_SUMS = 5
"""Columns of the per-block sums: sum dY, sum dY**2, sum dX, sum dX**2, sum dX dY."""
THREADS = 8 if SIMULATOR else 128
"""Threads per CUDA block (simulator: few, every thread is a Python thread)."""
EPS = 2.0**-52
"""The unit in the last place of 1.0: a correctly rounded result is within EPS/2 of exact."""
Z_MAX = math.sqrt(-2.0 * math.log(2.0**-53))
"""Largest |normal| the stream can produce (``1 - u1 >= 2**-53``): ~8.57."""
ULP_EXP, ULP_LOG, ULP_SINCOS = 2.0, 2.0, 3.0
"""Most ulp by which two implementations may differ: libdevice (CUDA Programming Guide,
double precision: exp 1, log 1, sin/cos 2 ulp) plus glibc on x86-64 (glibc manual,
"Known Maximum Errors": 1 ulp each)."""


@cuda.jit(device=True)
def _pair(key, p, steps, asian, phi, strike, x0, a, b, c_y, e_x):
    """(dY, dX) of antithetic pair ``p`` of the block with ``key`` (the CPU loop body)."""
    x_up = x0
    x_dn = x0
    sum_up = 0.0
    sum_dn = 0.0
    log_up = 0.0
    log_dn = 0.0
    spare = 0.0
    q0 = p * steps
    for k in range(steps):
        q = q0 + k
        if q & 1 == 0:
            z, spare = normal_pair(key, q >> 1)
        elif k == 0:
            _, z = normal_pair(key, q >> 1)  # the pair started in the previous path
        else:
            z = spare
        bz = mul(b, z)
        x_up = add(x_up, add(a, bz))
        x_dn = add(x_dn, add(a, -bz))
        sum_up = add(sum_up, math.exp(x_up))
        sum_dn = add(sum_dn, math.exp(x_dn))
        log_up = add(log_up, x_up)
        log_dn = add(log_dn, x_dn)
    y = mul(
        0.5,
        add(
            max(mul(phi, add(sum_up / steps, -strike)), 0.0),
            max(mul(phi, add(sum_dn / steps, -strike)), 0.0),
        ),
    )
    if asian:
        x = mul(
            0.5,
            add(
                max(mul(phi, add(math.exp(log_up / steps), -strike)), 0.0),
                max(mul(phi, add(math.exp(log_dn / steps), -strike)), 0.0),
            ),
        )
    else:
        x = e_x
    return add(y, -c_y), add(x, -e_x)


@cuda.jit
def _sums_kernel(
    seed, first_block, block_pairs, paths, steps, asian, phi, strike, x0, a, b, c_y, e_x, out
):
    j = cuda.blockIdx.x
    t = cuda.threadIdx.x
    block = first_block + j
    n_pairs = min(block_pairs, paths - block * block_pairs)
    dys = cuda.shared.array(OPTION_BLOCK_PATHS, np.float64)
    dxs = cuda.shared.array(OPTION_BLOCK_PATHS, np.float64)
    key = stream_key(seed, block)
    for p in range(t, n_pairs, cuda.blockDim.x):
        dy, dx = _pair(key, p, steps, asian, phi, strike, x0, a, b, c_y, e_x)
        dys[p] = dy
        dxs[p] = dx
    cuda.syncthreads()
    if t == 0:
        s_y = 0.0
        s_yy = 0.0
        s_x = 0.0
        s_xx = 0.0
        s_xy = 0.0
        for p in range(n_pairs):
            dy = dys[p]
            dx = dxs[p]
            s_y = add(s_y, dy)
            s_yy = add(s_yy, mul(dy, dy))
            s_x = add(s_x, dx)
            s_xx = add(s_xx, mul(dx, dx))
            s_xy = add(s_xy, mul(dx, dy))
        out[j, 0] = s_y
        out[j, 1] = s_yy
        out[j, 2] = s_x
        out[j, 3] = s_xx
        out[j, 4] = s_xy


def block_sums(
    seed: int,
    first_block: int,
    n_blocks: int,
    block_pairs: int,
    paths: int,
    steps: int,
    asian: bool,
    phi: float,
    strike: float,
    x0: float,
    a: float,
    b: float,
    c_y: float,
    e_x: float,
    threads: int = THREADS,
) -> np.ndarray:
    """The per-block sums of blocks ``first_block .. first_block + n_blocks - 1``.

    Parameters
    ----------
    seed, block_pairs, paths, steps, asian, phi, strike, x0, a, b, c_y, e_x
        As the CPU kernel takes them (the fields of ``option_pricing.Setup``):
        ``block_pairs <= OPTION_BLOCK_PATHS`` pairs per block, ``paths`` pairs in all,
        ``steps`` simulated steps (1 for EUROPEAN), ``phi`` +1 (CALL) or -1 (PUT),
        ``x0 = log(spot)``, per-step drift ``a`` and scale ``b`` of the log price, centres
        ``c_y`` and ``e_x``.
    first_block, n_blocks : int
        The stream blocks to simulate, all below ``ceil(paths / block_pairs)``.
    threads : int
        Threads per CUDA block, 1 .. 1024; never changes the result.

    Returns
    -------
    np.ndarray
        float64, shape ``(n_blocks, 5)``: sum dY, sum dY**2, sum dX, sum dX**2, sum dX dY
        of each block, as the CPU kernel's ``out`` rows.
    """
    if not 1 <= block_pairs <= OPTION_BLOCK_PATHS:
        raise ValueError(f"block_pairs must be 1 .. {OPTION_BLOCK_PATHS}")
    out = cuda.device_array((n_blocks, N_SUMS), dtype=np.float64)
    _sums_kernel[n_blocks, threads](
        seed,
        first_block,
        block_pairs,
        paths,
        steps,
        bool(asian),
        float(phi),
        float(strike),
        float(x0),
        float(a),
        float(b),
        float(c_y),
        float(e_x),
        out,
    )
    return out.copy_to_host()


def relative_bound(steps: int, x0: float, a: float, b: float) -> float:
    """Bound ``rho`` on the relative difference of a simulated average price between two
    implementations whose ``exp``/``log``/``sin``/``cos`` differ by a few ulp.

    First order in ``EPS = 2**-52``, worst case (every rounding in the unfavourable
    direction):

    * A normal ``z = sqrt(-2 log(1 - u1)) cos(2 pi u2)`` (or ``sin``): ``1 - u1`` and
      ``2 pi u2`` are computed identically; ``log`` differs by ``ULP_LOG`` ulp, which the
      square root halves, and ``sqrt`` and the product may each round differently:
      ``|dz| <= (ULP_LOG / 2 + 1 + ULP_SINCOS + 1) EPS |z|``, ``|z| <= Z_MAX``.
    * The log price ``x_k = x_{k-1} + (a + b z_k)``: the product and the two additions add
      at most ``EPS |b z|``, ``EPS |a + b z|`` and ``EPS |x_k|`` each step, so after
      ``steps`` steps ``dx <= EPS steps ((c_z + 1) b Z_MAX + (|a| + b Z_MAX) + x_max)``
      with ``x_max = |x0| + steps (|a| + b Z_MAX)``.
    * ``S = exp(x)``: relative ``dx + ULP_EXP EPS``; their running sum adds at most
      ``steps EPS`` relative, the division one more: ``rho_A = dx + (steps + ULP_EXP + 1)
      EPS``. The geometric average ``exp(sum x / steps)`` gives ``rho_G = dx + (steps x_max
      + ULP_EXP + 2) EPS`` (its sum of ``steps`` log prices).

    ``rho = max(rho_A, rho_G) + 3 EPS`` also covers the payoff's subtraction, ``phi``
    product and the pair's half-sum: a payoff ``f = max(phi (A - K), 0)`` then differs by at
    most ``rho (f + K)`` (``A <= f + K`` for a call in the money, ``A <= K`` otherwise).
    """
    c_z = ULP_LOG / 2.0 + 1.0 + ULP_SINCOS + 1.0
    bz = b * Z_MAX
    x_max = abs(x0) + steps * (abs(a) + bz)
    dx = EPS * steps * ((c_z + 1.0) * bz + (abs(a) + bz) + x_max)
    rho_a = dx + (steps + ULP_EXP + 1.0) * EPS
    rho_g = dx + (steps * x_max + ULP_EXP + 2.0) * EPS
    return max(rho_a, rho_g) + 3.0 * EPS


def sums_tolerance(
    sums: np.ndarray,
    pairs: np.ndarray,
    steps: int,
    strike: float,
    x0: float,
    a: float,
    b: float,
    c_y: float,
    e_x: float,
) -> np.ndarray:
    """Largest difference between two implementations' per-block sums (see the module).

    With ``rho`` from :func:`relative_bound`, each pair's ``dY`` differs by at most
    ``d_j = rho (|dY_j| + |c_y| + K) + EPS |dY_j|`` (likewise ``dX`` with ``e_x``), and a
    recursive sum of ``m`` terms may round differently by ``(m + 1) EPS sum |term|``. The
    per-pair magnitudes are bounded from the reference's own sums by Cauchy-Schwarz:
    ``sum |dY| <= sqrt(m sum dY**2)``, ``sum |dX dY| <= sqrt(sum dX**2 sum dY**2)``. For
    ``m`` pairs, ``P = sum |dY|``, ``Q = sum |dX|``, ``k_y = |c_y| + K``, ``k_x = |e_x| + K``:

    * ``sum dY``: ``rho (P + m k_y) + EPS P + (m + 1) EPS P`` (``sum dX`` likewise);
    * ``sum dY**2``: ``2 (rho + EPS) sum dY**2 + 2 rho k_y P + (m + 1) EPS sum dY**2``;
    * ``sum dX dY``: ``2 (rho + EPS) sum|dX dY| + rho (k_y Q + k_x P) + (m + 1) EPS sum|dX dY|``.

    Second-order terms are covered by doubling the result.

    Parameters
    ----------
    sums : np.ndarray
        float64, shape (blocks, 5): the reference (CPU) per-block sums.
    pairs : np.ndarray
        int, shape (blocks,): antithetic pairs in each block.
    steps, strike, x0, a, b, c_y, e_x
        As for :func:`block_sums`.

    Returns
    -------
    np.ndarray
        float64, shape (blocks, 5), >= 0.
    """
    rho = relative_bound(steps, x0, a, b)
    m = np.asarray(pairs, dtype=np.float64)
    s_yy = np.maximum(sums[:, 1], 0.0)
    s_xx = np.maximum(sums[:, 3], 0.0)
    p_y = np.sqrt(m * s_yy)
    q_x = np.sqrt(m * s_xx)
    pxy = np.sqrt(s_xx * s_yy)
    k_y = abs(c_y) + strike
    k_x = abs(e_x) + strike
    rounding = (m + 1.0) * EPS
    tol = np.empty_like(sums)
    tol[:, 0] = rho * (p_y + m * k_y) + EPS * p_y + rounding * p_y
    tol[:, 1] = 2.0 * (rho + EPS) * s_yy + 2.0 * rho * k_y * p_y + rounding * s_yy
    tol[:, 2] = rho * (q_x + m * k_x) + EPS * q_x + rounding * q_x
    tol[:, 3] = 2.0 * (rho + EPS) * s_xx + 2.0 * rho * k_x * q_x + rounding * s_xx
    tol[:, 4] = 2.0 * (rho + EPS) * pxy + rho * (k_y * q_x + k_x * p_y) + rounding * pxy
    return 2.0 * tol


def result_tolerance(
    summarize: Callable[[np.ndarray], Mapping[str, Any]],
    sums: np.ndarray,
    tol: np.ndarray,
    keys: tuple[str, ...] = ("price", "standardError"),
) -> dict[str, float]:
    """How far the result's ``keys`` can move when each per-block sum moves by its ``tol``.

    The result depends on the sums only through their column totals (``math.fsum`` of
    each column), and smoothly, so to first order its extremes over the box
    ``|totals' - totals| <= tol.sum(axis=0)`` lie at the box's 32 corners; the largest
    change found there is doubled (second-order terms, ``fsum``'s final rounding).

    Parameters
    ----------
    summarize : callable
        ``sums -> result`` (e.g. ``lambda s: option_pricing.summarize(setup, s, paths)``).
    sums, tol : np.ndarray
        float64, shape (blocks, 5): the reference sums and :func:`sums_tolerance`.

    Returns
    -------
    dict
        For each key, the largest absolute difference allowed.
    """
    base = summarize(sums)
    column_tol = tol.sum(axis=0)
    worst = dict.fromkeys(keys, 0.0)
    for signs in itertools.product((-1.0, 1.0), repeat=N_SUMS):
        corner = np.vstack([sums, np.asarray(signs) * column_tol])
        moved = summarize(corner)
        for key in keys:
            worst[key] = max(worst[key], abs(float(moved[key]) - float(base[key])))
    return {key: 2.0 * value for key, value in worst.items()}


def warm_up() -> None:
    """Compile the kernel."""
    block_sums(0, 0, 1, 2, 2, 2, True, 1.0, 100.0, math.log(100.0), 0.0, 0.01, 5.0, 5.0)
