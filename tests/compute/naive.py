"""Slow, obvious reference implementations the kernels are checked against.

Each kind has its own clearly separated section; they share nothing with ``compute/``
except the published algorithm, so a bug in a kernel's helpers cannot hide here.
"""

from __future__ import annotations

import math

# ---- the random streams (spelled out from the specification) --------------------------------

M64 = 2**64


def naive_mix64(z: int) -> int:
    z %= M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % M64
    return z ^ (z >> 31)


def naive_key(seed: int, block: int) -> int:
    return naive_mix64(seed * 0x9E3779B97F4A7C15 + block + 1)


def naive_uint64(seed: int, block: int, i: int) -> int:
    return naive_mix64(naive_key(seed, block) + i * 0x9E3779B97F4A7C15)


def naive_double(seed: int, block: int, i: int) -> float:
    return (naive_uint64(seed, block, i) >> 11) / 2.0**53


def naive_normal(seed: int, block: int, q: int) -> float:
    """Normal q of stream (seed, block): Box-Muller on doubles 2m, 2m+1 with m = q // 2."""
    m = q // 2
    u1 = naive_double(seed, block, 2 * m)
    u2 = naive_double(seed, block, 2 * m + 1)
    radius = math.sqrt(-2.0 * math.log(1.0 - u1))
    angle = 2.0 * math.pi * u2
    return radius * math.cos(angle) if q % 2 == 0 else radius * math.sin(angle)


# ---- monteCarloPi ---------------------------------------------------------------------------


def naive_pi_count(samples: int, seed: int, block_size: int) -> int:
    """Points i < samples with x**2 + y**2 < 1; point i is in block i // block_size."""
    inside = 0
    for i in range(samples):
        block, j = divmod(i, block_size)
        x = naive_double(seed, block, 2 * j)
        y = naive_double(seed, block, 2 * j + 1)
        if x * x + y * y < 1.0:
            inside += 1
    return inside


# ---- optionPricing --------------------------------------------------------------------------


def naive_option_samples(
    spot: float,
    strike: float,
    rate: float,
    volatility: float,
    maturity: float,
    option_type: str,
    style: str,
    paths: int,
    steps: int,
    seed: int,
    block_pairs: int,
) -> tuple[list[float], list[float]]:
    """The undiscounted pair averages (Y_j, X_j) of every antithetic pair j.

    Y: arithmetic (ASIAN) or terminal (EUROPEAN) payoff; X: geometric-average payoff
    (ASIAN only, else 0). Paths are built step by step from normal j_local * n + k.
    """
    asian = style == "ASIAN"
    n = steps if asian else 1
    dt = maturity / n

    def payoff(s: float) -> float:
        return max(s - strike, 0.0) if option_type == "CALL" else max(strike - s, 0.0)

    ys: list[float] = []
    xs: list[float] = []
    for j in range(paths):
        block, local = divmod(j, block_pairs)
        values = {+1: [], -1: []}
        for sign in (+1, -1):
            log_s = math.log(spot)
            for k in range(n):
                z = naive_normal(seed, block, local * n + k)
                log_s += (rate - 0.5 * volatility**2) * dt + sign * volatility * math.sqrt(dt) * z
                values[sign].append(log_s)
        ys.append(0.5 * sum(payoff(sum(math.exp(v) for v in values[s]) / n) for s in (1, -1)))
        if asian:
            xs.append(0.5 * sum(payoff(math.exp(sum(values[s]) / n)) for s in (1, -1)))
        else:
            xs.append(0.0)
    return ys, xs


def naive_option_price(
    ys: list[float], xs: list[float], discount: float, control: float | None
) -> tuple[float, float]:
    """(price, standard error) from pair averages; ``control`` = E[X] enables the control
    variate, with beta = cov(Y, X) / var(X) from the samples (two-pass formulas)."""
    n = len(ys)
    mean_y = sum(ys) / n
    if control is None:
        var = sum((y - mean_y) ** 2 for y in ys) / (n - 1)
        return discount * mean_y, discount * math.sqrt(var / n)
    mean_x = sum(xs) / n
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    var_x = sum((x - mean_x) ** 2 for x in xs)
    beta = cov / var_x
    residuals = [y - beta * (x - control) for x, y in zip(xs, ys, strict=True)]
    mean_r = sum(residuals) / n
    var = sum((r - mean_r) ** 2 for r in residuals) / (n - 2)
    return discount * mean_r, discount * math.sqrt(var / n)
