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


# ---- kMeans ---------------------------------------------------------------------------------


def naive_kmeans_data(
    n: int, d: int, clusters: int, spread: float, seed: int, block_size: int
) -> tuple[list[list[float]], list[int]]:
    """(points, true labels). Centre c, coordinate j: double c*d + j of stream (seed, 0);
    point i (block b = i // block_size, local p): label from uint64 p of stream
    (seed, 2 + 2b), coordinate j = centre + spread * normal (p*d + j) of stream (seed, 3 + 2b)."""
    centres = [[naive_double(seed, 0, c * d + j) for j in range(d)] for c in range(clusters)]
    points: list[list[float]] = []
    labels: list[int] = []
    for i in range(n):
        block, p = divmod(i, block_size)
        label = ((naive_uint64(seed, 2 + 2 * block, p) >> 11) * clusters) >> 53
        labels.append(label)
        points.append(
            [
                centres[label][j] + spread * naive_normal(seed, 3 + 2 * block, p * d + j)
                for j in range(d)
            ]
        )
    return points, labels


def _squared_distance(x: list[float], c: list[float]) -> float:
    total = 0.0
    for xj, cj in zip(x, c, strict=True):
        total += (xj - cj) * (xj - cj)
    return total


def naive_kmeans_plus_plus(points: list[list[float]], k: int, seed: int) -> list[list[float]]:
    """k-means++: the first centre is point floor(u_0 n); centre t the first point whose
    running sum of D^2 exceeds u_t * sum D^2 (u_t = double t of stream (seed, 1)); point
    floor(u_t n) when every D^2 is zero."""
    n = len(points)
    centres = [list(points[min(int(naive_double(seed, 1, 0) * n), n - 1)])]
    for t in range(1, k):
        d2 = [min(_squared_distance(x, c) for c in centres) for x in points]
        total = sum(d2)
        u = naive_double(seed, 1, t)
        if total == 0.0:
            centres.append(list(points[min(int(u * n), n - 1)]))
            continue
        target, running, chosen = u * total, 0.0, None
        for i, w in enumerate(d2):
            running += w
            if w > 0.0 and running > target:
                chosen = i
                break
        if chosen is None:
            chosen = max(i for i, w in enumerate(d2) if w > 0.0)
        centres.append(list(points[chosen]))
    return centres


def naive_kmeans(
    points: list[list[float]], labels: list[int], k: int, clusters: int, max_iterations: int,
    seed: int,
) -> tuple[dict[str, object], list[float]]:  # fmt: skip
    """Lloyd's algorithm from k-means++ centres, spelled out. Returns the result dict of the
    kind and the inertia of every assignment."""
    centroids = naive_kmeans_plus_plus(points, k, seed)
    assignment = [-1] * len(points)
    history: list[float] = []
    iterations, converged = 0, False
    while True:
        iterations += 1
        changed = 0
        inertia = 0.0
        for i, x in enumerate(points):
            distances = [_squared_distance(x, c) for c in centroids]
            best = distances.index(min(distances))  # the lowest index among ties
            changed += best != assignment[i]
            assignment[i] = best
            inertia += distances[best]
        history.append(inertia)
        converged = changed == 0
        if converged or iterations == max_iterations:
            break
        for c in range(k):
            members = [x for x, a in zip(points, assignment, strict=True) if a == c]
            if members:  # an empty cluster keeps its centroid
                centroids[c] = [sum(col) / len(members) for col in zip(*members, strict=True)]
    hits = 0
    for c in range(k):
        own = [label for label, a in zip(labels, assignment, strict=True) if a == c]
        if own:
            hits += max(own.count(t) for t in range(clusters))
    result = {
        "k": k,
        "iterations": iterations,
        "converged": converged,
        "inertia": inertia,
        "centroids": centroids,
        "recoveredFraction": hits / len(points),
    }
    return result, history
