"""Slow, obvious references for primeCount, mandelbrot and nBody.

They share nothing with ``compute/`` except the published definitions, so a bug in a
kernel's helpers cannot hide here.
"""

from __future__ import annotations

import math

import numpy as np

# ---- primeCount ------------------------------------------------------------------------------


def naive_prime_count(limit: int) -> int:
    """pi(limit) by the textbook sieve of Eratosthenes over all numbers 0 .. limit."""
    if limit < 2:
        return 0
    is_prime = [True] * (limit + 1)
    is_prime[0] = is_prime[1] = False
    for p in range(2, math.isqrt(limit) + 1):
        if is_prime[p]:
            for m in range(p * p, limit + 1, p):
                is_prime[m] = False
    return sum(is_prime)


def lucy_prime_count(n: int) -> int:
    """pi(n) by Lucy_Hedgehog's O(n**(3/4)) combinatorial method (no sieve of [0, n]).

    ``S(v)`` starts as the count of 2 .. v for every ``v`` of the form ``n // k``; for each
    prime ``p <= sqrt(n)`` in turn, ``S(v) -= S(v // p) - S(p - 1)`` for ``v >= p**2``
    removes the numbers whose least prime factor is ``p``. Then ``S(n) = pi(n)``.
    """
    if n < 2:
        return 0
    r = math.isqrt(n)
    # values n // k for k = 1 .. r (descending, large) and 1 .. n // r - ... (small)
    large = np.array([n // k for k in range(1, r + 1)], dtype=np.int64)
    small_top = large[-1] - 1
    small = np.arange(small_top, 0, -1, dtype=np.int64)
    values = np.concatenate([large, small])  # strictly descending, ends at 1
    s = values - 1  # S(v) = #{2 .. v}

    def index(v: np.ndarray) -> np.ndarray:
        # position of v in `values`: v <= small_top -> in the small tail, else n // v - 1
        return np.where(v <= small_top, len(large) + (small_top - v), n // np.maximum(v, 1) - 1)

    for p in range(2, r + 1):
        sp1 = s[index(np.array([p - 1]))[0]]
        if s[index(np.array([p]))[0]] == sp1:
            continue  # p is not prime
        p2 = p * p
        count = int(np.searchsorted(-values, -p2, side="right"))  # values >= p**2
        v = values[:count]
        s[:count] -= s[index(v // p)] - sp1
    return int(s[0])


# ---- mandelbrot -------------------------------------------------------------------------------


def naive_escape_counts(
    width: int, height: int, max_iter: int, window: tuple[float, float, float, float]
) -> list[list[int]]:
    """Escape counts by plain iteration (no cardioid test).

    Pixel centres are written about the window's centre, as the kernel does.
    """
    x_min, x_max, y_min, y_max = window
    x_c, y_c = (x_min + x_max) / 2, (y_min + y_max) / 2
    dx, dy = (x_max - x_min) / width, (y_max - y_min) / height
    rows = []
    for j in range(height):
        cy = y_c + (height / 2 - j - 0.5) * dy
        row = []
        for i in range(width):
            c = complex(x_c + (i + 0.5 - width / 2) * dx, cy)
            x = y = 0.0
            count = max_iter
            for n in range(max_iter):
                x, y = x * x - y * y + c.real, 2.0 * x * y + c.imag
                if x * x + y * y > 4.0:
                    count = n
                    break
            row.append(count)
        rows.append(row)
    return rows


# ---- nBody --------------------------------------------------------------------------------------


def naive_energy(positions, velocities, masses, softening: float) -> float:
    """Kinetic plus softened potential energy, double loop over pairs (G absorbed in masses)."""
    n = len(masses)
    e = 0.0
    for i in range(n):
        e += 0.5 * masses[i] * sum(c * c for c in velocities[i])
        for j in range(i + 1, n):
            r2 = sum((positions[i][k] - positions[j][k]) ** 2 for k in range(3))
            e -= masses[i] * masses[j] / math.sqrt(r2 + softening**2)
    return e


def naive_momentum(velocities, masses) -> list[float]:
    return [sum(masses[i] * velocities[i][k] for i in range(len(masses))) for k in range(3)]
