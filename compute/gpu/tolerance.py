"""How far optionPricing's GPU sums may lie from the CPU kernel's, derived, not fitted.

The GPU kernel (:mod:`.option_pricing`) performs the CPU kernel's arithmetic operation for
operation, each correctly rounded; only libdevice's ``exp``, ``log``, ``cos`` and ``sin``
may round differently from glibc's. :func:`relative_bound` propagates those few ulp
through a path, :func:`sums_tolerance` through a block's sums, :func:`result_tolerance`
through the price and standard error. Pure NumPy: importing it loads no CUDA target, so
tests and benchmarks compare results in a process that never imports ``numba.cuda``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

N_SUMS = 5
"""Columns of the per-block sums: sum dY, sum dY**2, sum dX, sum dX**2, sum dX dY."""
EPS = 2.0**-52
"""The unit in the last place of 1.0: a correctly rounded result is within EPS/2 of exact."""
Z_MAX = math.sqrt(-2.0 * math.log(2.0**-53))
"""Largest |normal| the stream can produce (``1 - u1 >= 2**-53``): ~8.57."""
ULP_EXP, ULP_LOG, ULP_SINCOS = 2.0, 2.0, 3.0
"""Most ulp by which two implementations may differ: libdevice (CUDA Programming Guide,
double precision: exp 1, log 1, sin/cos 2 ulp) plus glibc on x86-64 (glibc manual,
"Known Maximum Errors": 1 ulp each)."""


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
      EPS``. The geometric average ``exp(sum x / steps)``: the running sum of ``steps`` log
      prices rounds by at most ``EPS steps x_max`` per addition, the division by ``EPS
      x_max``, so ``rho_G = dx + ((steps + 1) x_max + ULP_EXP) EPS``.

    ``rho = max(rho_A, rho_G) + 3 EPS`` also covers the payoff's subtraction, ``phi``
    product and the pair's half-sum: a payoff ``f = max(phi (A - K), 0)`` then differs by at
    most ``rho (f + K)`` (``A <= f + K`` for a call in the money, ``A <= K`` otherwise).
    """
    c_z = ULP_LOG / 2.0 + 1.0 + ULP_SINCOS + 1.0
    bz = b * Z_MAX
    x_max = abs(x0) + steps * (abs(a) + bz)
    dx = EPS * steps * ((c_z + 1.0) * bz + (abs(a) + bz) + x_max)
    rho_a = dx + (steps + ULP_EXP + 1.0) * EPS
    rho_g = dx + ((steps + 1.0) * x_max + ULP_EXP) * EPS
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
    * ``sum dY**2``: ``2 (rho + EPS) sum dY**2 + 2 rho k_y P + (m + 2) EPS sum dY**2`` (one
      more ``EPS`` for each product's own rounding; ``sum dX**2`` likewise);
    * ``sum dX dY``: ``2 (rho + EPS) sum|dX dY| + rho (k_y Q + k_x P) + (m + 2) EPS sum|dX dY|``.

    Second-order terms are covered by doubling the result.

    Parameters
    ----------
    sums : np.ndarray
        float64, shape (blocks, 5): the reference (CPU) per-block sums.
    pairs : np.ndarray
        int, shape (blocks,): antithetic pairs in each block.
    steps, strike, x0, a, b, c_y, e_x
        As the kernels take them (the fields of ``option_pricing.Setup``).

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
    rounding = (m + 1.0) * EPS  # a recursive sum of m terms, either side
    products = (m + 2.0) * EPS  # and each term's own product
    tol = np.empty_like(sums)
    tol[:, 0] = rho * (p_y + m * k_y) + EPS * p_y + rounding * p_y
    tol[:, 1] = 2.0 * (rho + EPS) * s_yy + 2.0 * rho * k_y * p_y + products * s_yy
    tol[:, 2] = rho * (q_x + m * k_x) + EPS * q_x + rounding * q_x
    tol[:, 3] = 2.0 * (rho + EPS) * s_xx + 2.0 * rho * k_x * q_x + products * s_xx
    tol[:, 4] = 2.0 * (rho + EPS) * pxy + rho * (k_y * q_x + k_x * p_y) + products * pxy
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
