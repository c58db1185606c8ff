"""Monte Carlo prices of European and arithmetic-average Asian options under Black-Scholes.

Model (risk-neutral geometric Brownian motion), with ``dt = T / steps``::

    S_{t+dt} = S_t exp((r - sigma**2 / 2) dt + sigma sqrt(dt) Z),   Z ~ N(0, 1)

in log space: ``x_k = x_{k-1} + a + b Z_k``, ``x_0 = log S_0``, ``S_k = exp(x_k)``.

* EUROPEAN: payoff ``f(S_T)``. Only ``S_T`` matters, so it is simulated exactly in one
  jump (``a = (r - sigma**2/2) T``, ``b = sigma sqrt(T)``) whatever ``steps`` is.
* ASIAN: payoff ``f(A)``, ``A = (1/steps) sum_{k=1..steps} S_{t_k}``, ``t_k = k T / steps``.

``f(s) = max(s - K, 0)`` (CALL) or ``max(K - s, 0)`` (PUT), discounted by ``exp(-r T)``.

Variance reduction:

* Antithetic variates. ``paths`` counts antithetic *pairs*: pair ``j`` simulates one
  trajectory with the normals ``Z`` and one with ``-Z``, and contributes the single
  sample ``Y_j = (f(path+) + f(path-)) / 2``. Price and standard error come from the
  ``n = paths`` independent ``Y_j`` (the two halves of a pair are not independent).
* ASIAN also uses a control variate: ``X_j``, the same pair average of the *geometric*
  average payoff, whose expectation ``E[X]`` has a closed form
  (:func:`geometric_asian_price`). With ``beta = cov(Y, X) / var(X)`` estimated from the
  samples, ``price = exp(-rT) (mean(Y) - beta (mean(X) - E[X]))`` and
  ``SE = exp(-rT) sqrt(var(Y - beta X) / n)`` (``n - 2`` degrees of freedom).

95 % interval: ``price +- 1.959964 SE``. With ``paths = 1`` (or 2 for ASIAN) the
sample variance is undefined and the standard error is reported as 0.

Random numbers: pairs are grouped in blocks of :func:`block_pairs` pairs (1024 for up to
256 steps, fewer beyond, so one block stays ~10 ms); block ``b`` uses
stream ``(seed, b)`` of :mod:`compute.random`, and step ``k`` of its pair ``j`` uses normal
``j * steps + k`` of the stream (``steps = 1`` for EUROPEAN), Box-Muller on doubles
``2m, 2m + 1`` giving normals ``2m`` (cosine) and ``2m + 1`` (sine). Each block's sums are
written to its own row and the rows are added with ``math.fsum`` (correctly rounded, so
order-free): the result is bitwise the same for any thread count or chunking.

Entry points: :data:`KIND`; :func:`price_option` (the whole computation at once); the
closed forms :func:`black_scholes_price` and :func:`geometric_asian_price`; and for
benchmarks :func:`price_option_parallel`, :func:`price_option_serial`,
:func:`price_option_numpy`, :func:`price_option_python`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba import njit, prange

from crunchql.compute import config
from crunchql.compute.base import JSONDict
from crunchql.compute.params.option_pricing import OptionPricingParams
from crunchql.compute.random import (
    normal_at_py,
    normal_pair,
    normals_np,
    stream_key,
    stream_key_py,
)

N_SUMS = 5
"""Columns of the per-block sums: sum dY, sum dY**2, sum dX, sum dX**2, sum dX dY, where
``dY = Y - c_y`` and ``dX = X - E[X]`` are shifted by rough centres to avoid cancellation."""


# ---- closed forms -----------------------------------------------------------------------


def _norm_cdf(x: float) -> float:
    """Standard normal CDF, ``erfc(-x / sqrt 2) / 2`` (accurate in the lower tail)."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _lognormal_call_put(
    forward: float, strike: float, sd: float, discount: float, option_type: str
) -> float:
    """``discount * E[f(F exp(sd W - sd**2 / 2))]`` for W ~ N(0, 1) (Black's formula)."""
    d1 = (math.log(forward / strike) + 0.5 * sd * sd) / sd
    d2 = d1 - sd
    if option_type == "CALL":
        return discount * (forward * _norm_cdf(d1) - strike * _norm_cdf(d2))
    return discount * (strike * _norm_cdf(-d2) - forward * _norm_cdf(-d1))


def black_scholes_price(
    spot: float,
    strike: float,
    rate: float,
    volatility: float,
    maturity: float,
    option_type: str,
) -> float:
    """Black-Scholes price of a European call or put (no dividends).

    ``C = S N(d1) - K e^{-rT} N(d2)``, ``P = K e^{-rT} N(-d2) - S N(-d1)``,
    ``d1 = (ln(S/K) + (r + sigma**2/2) T) / (sigma sqrt T)``, ``d2 = d1 - sigma sqrt T``.

    Parameters
    ----------
    spot, strike : float
        > 0, in currency units.
    rate : float
        Continuously compounded risk-free rate per year.
    volatility : float
        > 0, per sqrt(year).
    maturity : float
        > 0, in years.
    option_type : {"CALL", "PUT"}

    Returns
    -------
    float
        The price, in currency units.
    """
    discount = math.exp(-rate * maturity)
    forward = spot * math.exp(rate * maturity)
    return _lognormal_call_put(
        forward, strike, volatility * math.sqrt(maturity), discount, option_type
    )


def geometric_asian_price(
    spot: float,
    strike: float,
    rate: float,
    volatility: float,
    maturity: float,
    option_type: str,
    steps: int,
) -> float:
    """Price of a discretely monitored geometric-average Asian option (closed form).

    ``G = (prod_{k=1..n} S_{t_k})**(1/n)``, ``t_k = k T / n``, is lognormal with
    ``E[ln G] = ln S + (r - sigma**2/2) T (n + 1) / (2n)`` and
    ``Var[ln G] = sigma**2 T (n + 1)(2n + 1) / (6 n**2)``; the price is Black's formula
    on it, discounted by ``e^{-rT}``. ``n = 1`` gives :func:`black_scholes_price`.

    Parameters
    ----------
    spot, strike, rate, volatility, maturity, option_type
        As in :func:`black_scholes_price`.
    steps : int
        Number ``n >= 1`` of monitoring dates.

    Returns
    -------
    float
        The price, in currency units.
    """
    n = steps
    mean_log = math.log(spot) + (rate - 0.5 * volatility**2) * maturity * (n + 1) / (2 * n)
    var_log = volatility**2 * maturity * (n + 1) * (2 * n + 1) / (6 * n * n)
    forward = math.exp(mean_log + 0.5 * var_log)
    return _lognormal_call_put(
        forward, strike, math.sqrt(var_log), math.exp(-rate * maturity), option_type
    )


# ---- the simulation set-up ------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """Everything a kernel needs, derived from validated parameters.

    ``steps`` is the number of simulated steps (1 for EUROPEAN), ``a`` and ``b`` the
    per-step drift and scale of the log price, ``phi`` +1 (CALL) or -1 (PUT) so that
    ``f(s) = max(phi (s - K), 0)``, ``c_y`` and ``e_x`` the undiscounted centres of Y and X
    (``e_x = E[X]`` exactly for ASIAN), ``discount = exp(-rT)``.
    """

    seed: int
    paths: int
    steps: int
    asian: bool
    phi: float
    strike: float
    x0: float
    a: float
    b: float
    c_y: float
    e_x: float
    discount: float
    analytic: float | None
    block_pairs: int

    @property
    def blocks(self) -> int:
        return -(-self.paths // self.block_pairs)


def make_setup(params: Mapping[str, Any]) -> Setup:
    """A :class:`Setup` from validated parameters (the output of :func:`validate`)."""
    spot, strike = float(params["spot"]), float(params["strike"])
    rate, vol, maturity = (
        float(params["rate"]),
        float(params["volatility"]),
        float(params["maturity"]),
    )
    option_type, asian = params["optionType"], params["style"] == "ASIAN"
    steps = int(params["steps"]) if asian else 1
    dt = maturity / steps
    discount = math.exp(-rate * maturity)
    if asian:
        geometric = geometric_asian_price(spot, strike, rate, vol, maturity, option_type, steps)
        analytic = None
        c_y = e_x = geometric / discount
    else:
        analytic = black_scholes_price(spot, strike, rate, vol, maturity, option_type)
        c_y, e_x = analytic / discount, 0.0
    return Setup(
        seed=int(params["seed"]),
        paths=int(params["paths"]),
        steps=steps,
        asian=asian,
        phi=1.0 if option_type == "CALL" else -1.0,
        strike=strike,
        x0=math.log(spot),
        a=(rate - 0.5 * vol * vol) * dt,
        b=vol * math.sqrt(dt),
        c_y=c_y,
        e_x=e_x,
        discount=discount,
        analytic=analytic,
        block_pairs=block_pairs(steps),
    )


def block_pairs(steps: int) -> int:
    """Antithetic pairs per block (random stream) for ``steps`` simulated steps.

    ``clamp(OPTION_BLOCK_PATH_STEPS // steps, 1, OPTION_BLOCK_PATHS)``: a block is at most
    ~2**18 pair-steps (~10 ms on one core), so a chunk stays short even for 10**4 steps.
    It depends only on the parameters, never on threads.
    """
    return max(1, min(config.OPTION_BLOCK_PATHS, config.OPTION_BLOCK_PATH_STEPS // steps))


# ---- kernels ------------------------------------------------------------------------------


@njit(inline="always", cache=True)
def _simulate_block(seed, block, n_pairs, steps, asian, phi, strike, x0, a, b, c_y, e_x, out):  # type: ignore[no-untyped-def]
    """Simulate the ``n_pairs`` antithetic pairs of ``block``; write their 5 sums to ``out``.

    ``out`` is a float64 row of shape (5,): sum dY, sum dY**2, sum dX, sum dX**2,
    sum dX dY with ``dY = Y - c_y``, ``dX = X - e_x`` (X = 0 for EUROPEAN).
    """
    key = stream_key(seed, block)
    s_y = 0.0
    s_yy = 0.0
    s_x = 0.0
    s_xx = 0.0
    s_xy = 0.0
    spare = 0.0
    q = 0  # index of the next normal in the stream
    for _ in range(n_pairs):
        x_up = x0
        x_dn = x0
        sum_up = 0.0
        sum_dn = 0.0
        log_up = 0.0
        log_dn = 0.0
        for _k in range(steps):
            if q & 1 == 0:
                z, spare = normal_pair(key, q >> 1)
            else:
                z = spare
            q += 1
            x_up += a + b * z
            x_dn += a - b * z
            sum_up += math.exp(x_up)
            sum_dn += math.exp(x_dn)
            log_up += x_up
            log_dn += x_dn
        y = 0.5 * (
            max(phi * (sum_up / steps - strike), 0.0) + max(phi * (sum_dn / steps - strike), 0.0)
        )
        if asian:
            x = 0.5 * (
                max(phi * (math.exp(log_up / steps) - strike), 0.0)
                + max(phi * (math.exp(log_dn / steps) - strike), 0.0)
            )
        else:
            x = e_x
        dy = y - c_y
        dx = x - e_x
        s_y += dy
        s_yy += dy * dy
        s_x += dx
        s_xx += dx * dx
        s_xy += dx * dy
    out[0] = s_y
    out[1] = s_yy
    out[2] = s_x
    out[3] = s_xx
    out[4] = s_xy


@njit(cache=True, nogil=True, parallel=True, fastmath=set(config.FASTMATH_FLAGS))
def _sums_parallel(  # type: ignore[no-untyped-def]
    seed, first_block, block_pairs, paths, steps, asian, phi, strike, x0, a, b, c_y, e_x, out
):
    """Per-block sums of the option's pair averages, one block per task.

    Parameters
    ----------
    seed, first_block : int
        The streams; row ``j`` of ``out`` is block ``first_block + j``.
    block_pairs, paths, steps : int
        Antithetic pairs per block, in all, and monitoring dates.
    asian : bool
    phi, strike, x0, a, b, c_y, e_x : float
        The set-up (see :class:`Setup`).
    out : np.ndarray
        Shape ``(blocks, N_SUMS)``, float64, overwritten with each block's sums (see
        :data:`N_SUMS`); summed in block order afterwards, so threads never change them.
    """
    for j in prange(out.shape[0]):
        block = first_block + j
        n_pairs = min(block_pairs, paths - block * block_pairs)
        _simulate_block(seed, block, n_pairs, steps, asian, phi, strike, x0, a, b, c_y, e_x, out[j])


@njit(cache=True, nogil=True, fastmath=set(config.FASTMATH_FLAGS))
def _sums_serial(  # type: ignore[no-untyped-def]
    seed, first_block, block_pairs, paths, steps, asian, phi, strike, x0, a, b, c_y, e_x, out
):
    """:func:`_sums_parallel` on one thread."""
    for j in range(out.shape[0]):
        block = first_block + j
        n_pairs = min(block_pairs, paths - block * block_pairs)
        _simulate_block(seed, block, n_pairs, steps, asian, phi, strike, x0, a, b, c_y, e_x, out[j])


def _run_kernel(kernel: Any, setup: Setup, first_block: int, out: np.ndarray) -> None:
    kernel(
        setup.seed,
        first_block,
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
        out,
    )


# ---- statistics -----------------------------------------------------------------------------


def summarize(setup: Setup, sums: np.ndarray, n: int) -> JSONDict:
    """The result from per-block sums.

    Parameters
    ----------
    setup : Setup
    sums : np.ndarray
        Shape (blocks, 5), float64: the rows of the blocks simulated so far.
    n : int
        Number of antithetic pairs those blocks hold, >= 1.

    Returns
    -------
    dict
        ``price``, ``standardError``, ``confidenceLow``, ``confidenceHigh`` (floats, currency
        units) and ``analyticPrice`` (Black-Scholes for EUROPEAN, None for ASIAN).
    """
    s_y, s_yy, s_x, s_xx, s_xy = (math.fsum(sums[:, i]) for i in range(N_SUMS))
    # centred sums of squares and products: sum (Y - mean Y)**2 etc.
    c_yy = max(s_yy - s_y * s_y / n, 0.0)
    c_xx = max(s_xx - s_x * s_x / n, 0.0)
    c_xy = s_xy - s_x * s_y / n
    if setup.asian and c_xx > 0.0:
        beta = c_xy / c_xx
        mean = setup.c_y + (s_y - beta * s_x) / n
        residual, dof = max(c_yy - beta * c_xy, 0.0), n - 2
    else:
        mean = setup.c_y + s_y / n
        residual, dof = c_yy, n - 1
    price = setup.discount * mean
    se = setup.discount * math.sqrt(residual / dof / n) if dof > 0 else 0.0
    half = config.CONFIDENCE_Z * se
    return {
        "price": price,
        "standardError": se,
        "confidenceLow": price - half,
        "confidenceHigh": price + half,
        "analyticPrice": setup.analytic,
    }


def _price_with(kernel: Any, params: Mapping[str, Any]) -> JSONDict:
    setup = make_setup(params)
    sums = np.zeros((setup.blocks, N_SUMS))
    _run_kernel(kernel, setup, 0, sums)
    return summarize(setup, sums, setup.paths)


def price_option(params: Mapping[str, Any]) -> JSONDict:
    """Price an option with the parallel kernel in one call.

    Parameters
    ----------
    params : mapping
        Validated parameters (see :func:`validate`): ``spot, strike, rate, volatility,
        maturity`` (floats), ``optionType`` ("CALL"/"PUT"), ``style`` ("EUROPEAN"/"ASIAN"),
        ``paths`` (antithetic pairs), ``steps``, ``seed`` (ints).

    Returns
    -------
    dict
        See :func:`summarize`.
    """
    return _price_with(_sums_parallel, params)


def price_option_parallel(params: Mapping[str, Any]) -> JSONDict:
    """:func:`price_option` (numba, all threads), for the benchmark."""
    return _price_with(_sums_parallel, params)


def price_option_serial(params: Mapping[str, Any]) -> JSONDict:
    """:func:`price_option` on one thread (numba, no prange). Bitwise the same result."""
    return _price_with(_sums_serial, params)


# ---- reference implementations for benchmarks (same streams) --------------------------------


def price_option_numpy(params: Mapping[str, Any]) -> JSONDict:
    """:func:`price_option` vectorised with NumPy over the pairs of one block at a time.

    Same normals and paths; sums are taken in a different order, so the result agrees
    with the kernel to ~1e-12 relative, not bitwise. Memory: ~5 arrays of
    ``block_pairs * steps`` doubles.
    """
    s = make_setup(params)
    sums = np.zeros((s.blocks, N_SUMS))
    for block in range(s.blocks):
        n_pairs = min(s.block_pairs, s.paths - block * s.block_pairs)
        count = n_pairs * s.steps
        z = normals_np(stream_key_py(s.seed, block), 0, (count + 1) // 2)[:count]
        z = z.reshape(n_pairs, s.steps)
        start = np.full((n_pairs, 1), s.x0)
        x_up = np.cumsum(np.hstack([start, s.a + s.b * z]), axis=1)[:, 1:]
        x_dn = np.cumsum(np.hstack([start, s.a - s.b * z]), axis=1)[:, 1:]
        y = 0.5 * (
            np.maximum(s.phi * (np.exp(x_up).sum(axis=1) / s.steps - s.strike), 0.0)
            + np.maximum(s.phi * (np.exp(x_dn).sum(axis=1) / s.steps - s.strike), 0.0)
        )
        if s.asian:
            x = 0.5 * (
                np.maximum(s.phi * (np.exp(x_up.sum(axis=1) / s.steps) - s.strike), 0.0)
                + np.maximum(s.phi * (np.exp(x_dn.sum(axis=1) / s.steps) - s.strike), 0.0)
            )
        else:
            x = np.full(n_pairs, s.e_x)
        dy, dx = y - s.c_y, x - s.e_x
        sums[block] = (dy.sum(), (dy * dy).sum(), dx.sum(), (dx * dx).sum(), (dx * dy).sum())
    return summarize(s, sums, s.paths)


def price_option_python(params: Mapping[str, Any]) -> JSONDict:
    """:func:`price_option` in pure Python, operation for operation like the kernel.

    Bitwise the same result as the kernel (same libm). ~2 microseconds per pair-step.
    """
    s = make_setup(params)
    sums = np.zeros((s.blocks, N_SUMS))
    for block in range(s.blocks):
        key = stream_key_py(s.seed, block)
        n_pairs = min(s.block_pairs, s.paths - block * s.block_pairs)
        row = [0.0] * N_SUMS
        q = 0
        for _ in range(n_pairs):
            x_up = x_dn = s.x0
            sum_up = sum_dn = log_up = log_dn = 0.0
            for _k in range(s.steps):
                z = normal_at_py(key, q)
                q += 1
                x_up += s.a + s.b * z
                x_dn += s.a - s.b * z
                sum_up += math.exp(x_up)
                sum_dn += math.exp(x_dn)
                log_up += x_up
                log_dn += x_dn
            y = 0.5 * (
                max(s.phi * (sum_up / s.steps - s.strike), 0.0)
                + max(s.phi * (sum_dn / s.steps - s.strike), 0.0)
            )
            if s.asian:
                x = 0.5 * (
                    max(s.phi * (math.exp(log_up / s.steps) - s.strike), 0.0)
                    + max(s.phi * (math.exp(log_dn / s.steps) - s.strike), 0.0)
                )
            else:
                x = s.e_x
            dy, dx = y - s.c_y, x - s.e_x
            row[0] += dy
            row[1] += dy * dy
            row[2] += dx
            row[3] += dx * dx
            row[4] += dx * dy
        sums[block] = row
    return summarize(s, sums, s.paths)


# ---- the job ---------------------------------------------------------------------------------


class OptionJob:
    """An option price run chunk by chunk; a chunk is ~``OPTION_CHUNK_PATH_STEPS`` pair-steps,
    at least one block per thread (the chunking never changes the result)."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.setup = make_setup(params)
        self.sums = np.zeros((self.setup.blocks, N_SUMS))
        self.next_block = 0
        per_block = self.setup.block_pairs * self.setup.steps
        self.chunk_blocks = max(
            numba.get_num_threads(), config.OPTION_CHUNK_PATH_STEPS // per_block
        )

    @property
    def done(self) -> bool:
        return self.next_block >= self.setup.blocks

    @property
    def progress(self) -> float:
        return 1.0 if self.done else self.next_block / self.setup.blocks

    def step(self) -> None:
        if self.done:
            return
        stop = min(self.next_block + self.chunk_blocks, self.setup.blocks)
        _run_kernel(_sums_parallel, self.setup, self.next_block, self.sums[self.next_block : stop])
        self.next_block = stop

    def _pairs_done(self) -> int:
        return min(self.setup.paths, self.next_block * self.setup.block_pairs)

    def partial_result(self) -> JSONDict | None:
        n = self._pairs_done()
        return None if n == 0 else summarize(self.setup, self.sums[: self.next_block], n)

    def result(self) -> JSONDict:
        if not self.done:
            raise RuntimeError("the job is not done")
        return summarize(self.setup, self.sums, self.setup.paths)


def start(params: OptionPricingParams) -> OptionJob:
    """An :class:`OptionJob` for validated ``params``."""
    return OptionJob(params.to_json())


def warm_up() -> None:
    """Compile or load from cache both kernels (style and type are runtime arguments, so
    one specialization each covers all four combinations)."""
    params = {
        "spot": 100.0,
        "strike": 100.0,
        "rate": 0.05,
        "volatility": 0.2,
        "maturity": 1.0,
        "optionType": "CALL",
        "style": "ASIAN",
        "paths": 2,
        "steps": 2,
        "seed": 0,
    }
    price_option_parallel(params)
    price_option_serial(params)
