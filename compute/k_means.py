"""k-means clustering of points drawn from the seed: Lloyd's algorithm with k-means++
initialisation.

The data (streams of :mod:`compute.random`; ``d`` = dimensions, ``B`` =
``KMEANS_BLOCK_POINTS``, point ``i`` is point ``p = i % B`` of block ``b = i // B``)::

    true centre c, coordinate j   = double (c d + j) of stream (seed, 0), uniform in [0, 1)
    true label of point i         = ((uint64 p of stream (seed, 2 + 2b)) >> 11) * clusters >> 53
    coordinate j of point i       = centre[label_i, j] + spread * normal (p d + j) of stream
                                    (seed, 3 + 2b)
    k-means++ draw t              = double t of stream (seed, 1)

k-means++ (Arthur & Vassilvitskii, 2007): centroid 0 is point ``floor(u_0 n)``; centroid
``t`` is the first point ``i`` whose running sum of ``D(x)^2`` (squared distance to the
nearest centroid chosen so far, summed block by block) exceeds ``u_t * sum D^2`` (when
every ``D^2`` is 0, point ``floor(u_t n)``). Lloyd: each iteration assigns every point to
its nearest centroid (squared Euclidean distance summed over coordinates in order; ties
go to the lowest index), then moves each centroid to the mean of its points (an empty
cluster keeps its centroid). It stops when no assignment changed or after
``maxIterations`` assignments. The result reports the centroids of the last assignment
and its inertia ``sum_i |x_i - c_(a_i)|^2``, so the two agree; ``recoveredFraction``
(purity) labels each found cluster with the true cluster most of its points come from
(lowest index on ties) and counts the points whose true cluster is that label.

Bitwise identical on any number of threads: floating-point sums are not associative, and
numba's ``prange`` reductions combine per-thread partials in an order that depends on
the thread count. So no floating-point value is reduced across threads. The points are
split into fixed blocks of ``B`` points; each block's partial sums (coordinate sums,
counts, inertia, ``D^2``) are accumulated in point order into the block's own slot, and
the blocks are then combined sequentially in block order. Integer sums (counts,
changes) are exact anyway. A chunk (one ``step``) is a range of whole blocks, so neither
threads nor chunking move a single rounding. (Compensated or integer sums would also be
order-free, but cost more per term and still need a fixed combination of the partials.)

Memory: labels and assignments (4 bytes each per point), ``D^2`` during initialisation (8
bytes per point), per-block sums (``blocks * k * d`` doubles, <= ~20 MB), and the points
themselves (``8 n d`` bytes) only when ``n d <= KMEANS_CACHE_COORDINATES``; larger inputs
regenerate each block's points on every pass, to the same bits.

Entry points: :func:`start` and :func:`warm_up` (for the runner, through
:data:`crunchql.compute.catalog.K_MEANS`), :func:`k_means` (the whole computation at once).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from crunchql.compute import config
from crunchql.compute.base import JSONDict
from crunchql.compute.params.k_means import KMeansParams
from crunchql.compute.random import (
    normal_pair,
    stream_key,
    stream_key_py,
    uint64_at,
    uniform_at,
    uniform_at_py,
)

BLOCK = config.KMEANS_BLOCK_POINTS
CENTRES_STREAM = 0
INIT_STREAM = 1
_S11 = np.uint64(11)
_S53 = np.uint64(53)
_FASTMATH = set(config.FASTMATH_FLAGS)

# ---- the data -----------------------------------------------------------------------------


@njit(cache=True)
def _true_centres(seed, clusters, d):  # type: ignore[no-untyped-def]
    """Shape ``(clusters, d)`` float64, uniform in [0, 1)."""
    key = stream_key(seed, CENTRES_STREAM)
    out = np.empty((clusters, d))
    for c in range(clusters):
        for j in range(d):
            out[c, j] = uniform_at(key, c * d + j)
    return out


@njit(cache=True, nogil=True, parallel=True)
def _labels(seed, n, clusters, first_block, n_blocks, labels):  # type: ignore[no-untyped-def]
    """Fill ``labels[i]`` (int32, true cluster 0 .. clusters - 1) for the points of the blocks."""
    for jb in prange(n_blocks):
        b = first_block + jb
        key = stream_key(seed, 2 + 2 * b)
        lo = b * BLOCK
        for p in range(min(n, lo + BLOCK) - lo):
            bits = uint64_at(key, p) >> _S11
            labels[lo + p] = np.int64((bits * np.uint64(clusters)) >> _S53)


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _fill_block(seed, b, m, d, spread, centres, labels, out, off):  # type: ignore[no-untyped-def]
    """Write the ``m`` points of block ``b`` to ``out[off : off + m d]`` (row-major)."""
    key = stream_key(seed, 3 + 2 * b)
    lo = b * BLOCK
    total = m * d
    for pair in range((total + 1) // 2):
        z0, z1 = normal_pair(key, pair)
        q = 2 * pair
        p = q // d
        out[off + q] = centres[labels[lo + p], q - p * d] + spread * z0
        if q + 1 < total:
            p = (q + 1) // d
            out[off + q + 1] = centres[labels[lo + p], q + 1 - p * d] + spread * z1


@njit(cache=True, nogil=True, parallel=True, fastmath=_FASTMATH)
def _generate(seed, n, d, spread, centres, labels, first_block, n_blocks, points):  # type: ignore[no-untyped-def]
    """Fill the cached ``points`` (flat, ``n d`` float64) for the blocks."""
    for jb in prange(n_blocks):
        b = first_block + jb
        lo = b * BLOCK
        _fill_block(seed, b, min(n, lo + BLOCK) - lo, d, spread, centres, labels, points, lo * d)


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _point(points, cached, seed, n, d, spread, centres, labels, i):  # type: ignore[no-untyped-def]
    """Coordinates of point ``i``, shape ``(d,)`` (regenerating its block when not cached)."""
    if cached:
        return points[i * d : (i + 1) * d].copy()
    b = i // BLOCK
    lo = b * BLOCK
    m = min(n, lo + BLOCK) - lo
    buf = np.empty(m * d)
    _fill_block(seed, b, m, d, spread, centres, labels, buf, 0)
    p = i - lo
    return buf[p * d : (p + 1) * d].copy()


# ---- k-means++ ------------------------------------------------------------------------------


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _min_d2_block(src, off, lo, m, d, centroid, first, d2):  # type: ignore[no-untyped-def]
    """Update ``d2`` for the ``m`` points at ``src[off:]`` (point ``lo + p``); return their
    sum in point order."""
    acc = 0.0
    for p in range(m):
        s = 0.0
        for j in range(d):
            diff = src[off + p * d + j] - centroid[j]
            s += diff * diff
        if first or s < d2[lo + p]:
            d2[lo + p] = s
        acc += d2[lo + p]
    return acc


@njit(cache=True, nogil=True, parallel=True, fastmath=_FASTMATH)
def _min_d2_blocks(  # type: ignore[no-untyped-def]
    points, cached, seed, n, d, spread, centres, labels, centroid, first, d2,
    first_block, n_blocks, block_d2,
):  # fmt: skip
    """``d2[i] = min(d2[i], |x_i - centroid|^2)`` (just the distance when ``first``), and
    ``block_d2[b]`` = the block's sum of ``d2`` in point order."""
    for jb in prange(n_blocks):
        b = first_block + jb
        lo = b * BLOCK
        m = min(n, lo + BLOCK) - lo
        if cached:
            block_d2[b] = _min_d2_block(points, lo * d, lo, m, d, centroid, first, d2)
        else:
            buf = np.empty(m * d)
            _fill_block(seed, b, m, d, spread, centres, labels, buf, 0)
            block_d2[b] = _min_d2_block(buf, 0, lo, m, d, centroid, first, d2)


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _pick(d2, block_d2, n, u):  # type: ignore[no-untyped-def]
    """The D^2-weighted draw for uniform ``u``: the first point whose running sum of ``d2``
    exceeds ``u * sum(d2)``, where whole blocks are skipped by their sums (block order)."""
    total = 0.0
    for b in range(block_d2.size):
        total += block_d2[b]
    if not total > 0.0:
        return min(np.int64(u * n), n - 1)
    target = u * total
    acc = 0.0
    for b in range(block_d2.size):
        if acc + block_d2[b] <= target:
            acc += block_d2[b]
            continue
        for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            acc += d2[i]
            if d2[i] > 0.0 and acc > target:
                return i
    for i in range(n - 1, -1, -1):  # rounding left the target unreached: the last candidate
        if d2[i] > 0.0:
            return i
    return n - 1


# ---- Lloyd ---------------------------------------------------------------------------------


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _assign_block(src, off, lo, m, d, centroids_t, assign, sums, counts, dist):  # type: ignore[no-untyped-def]
    """Assign the block's points; accumulate its sums, counts, inertia and changes in point
    order. ``centroids_t`` is ``(d, k)`` so the inner loop runs over centroids (vectorised:
    every ``dist[c]`` still sums its coordinates in order)."""
    k = centroids_t.shape[1]
    sums[:, :] = 0.0
    counts[:] = 0
    inertia = 0.0
    changes = 0
    for p in range(m):
        for c in range(k):
            dist[c] = 0.0
        for j in range(d):
            x = src[off + p * d + j]
            for c in range(k):
                diff = x - centroids_t[j, c]
                dist[c] += diff * diff
        best = 0
        best_d = dist[0]
        for c in range(1, k):
            if dist[c] < best_d:
                best = c
                best_d = dist[c]
        if assign[lo + p] != best:
            changes += 1
            assign[lo + p] = best
        counts[best] += 1
        inertia += best_d
        for j in range(d):
            sums[best, j] += src[off + p * d + j]
    return inertia, changes


@njit(cache=True, nogil=True, parallel=True, fastmath=_FASTMATH)
def _assign_blocks(  # type: ignore[no-untyped-def]
    points, cached, seed, n, d, spread, centres, labels, centroids_t, assign,
    first_block, n_blocks, block_sums, block_counts, block_inertia, block_changes,
):  # fmt: skip
    """One assignment pass over the blocks, each writing only its own slots."""
    k = centroids_t.shape[1]
    for jb in prange(n_blocks):
        b = first_block + jb
        lo = b * BLOCK
        m = min(n, lo + BLOCK) - lo
        dist = np.empty(k)
        if cached:
            inertia, changes = _assign_block(
                points, lo * d, lo, m, d, centroids_t, assign,
                block_sums[b], block_counts[b], dist,
            )  # fmt: skip
        else:
            buf = np.empty(m * d)
            _fill_block(seed, b, m, d, spread, centres, labels, buf, 0)
            inertia, changes = _assign_block(
                buf, 0, lo, m, d, centroids_t, assign, block_sums[b], block_counts[b], dist
            )
        block_inertia[b] = inertia
        block_changes[b] = changes


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _combine(block_sums, block_counts, block_inertia, block_changes, centroids):  # type: ignore[no-untyped-def]
    """Combine the blocks in block order; move ``centroids`` (k, d) to the means (an empty
    cluster keeps its centroid). Returns ``(inertia, changes)``."""
    n_blocks, k, d = block_sums.shape
    sums = np.zeros((k, d))
    counts = np.zeros(k, dtype=np.int64)
    inertia = 0.0
    changes = 0
    for b in range(n_blocks):
        inertia += block_inertia[b]
        changes += block_changes[b]
        for c in range(k):
            counts[c] += block_counts[b, c]
            for j in range(d):
                sums[c, j] += block_sums[b, c, j]
    for c in range(k):
        if counts[c] > 0:
            for j in range(d):
                centroids[c, j] = sums[c, j] / counts[c]
    return inertia, changes


@njit(cache=True, nogil=True)
def _purity(assign, labels, k, clusters):  # type: ignore[no-untyped-def]
    """Share of points whose true label is the majority label of their found cluster."""
    table = np.zeros((k, clusters), dtype=np.int64)
    for i in range(assign.size):
        table[assign[i], labels[i]] += 1
    hits = 0
    for c in range(k):
        hits += table[c].max()
    return hits / assign.size


# ---- the job ---------------------------------------------------------------------------------


class KMeansJob:
    """k-means run chunk by chunk: generation, then k - 1 k-means++ passes, then Lloyd
    iterations; every chunk is a range of whole blocks of one pass (a pass's last chunk
    also finishes it: picks a centroid, or moves the centroids).

    ``inertia_history`` holds the inertia of every finished assignment pass.
    """

    def __init__(
        self, params: KMeansParams, cache_coordinates: int = config.KMEANS_CACHE_COORDINATES
    ) -> None:
        self.params = params
        n, d, k = params.n, params.dimensions, params.k
        self.blocks = -(-n // BLOCK)
        self.cached = n * d <= cache_coordinates
        self.centres = _true_centres(params.seed, params.clusters, d)
        self.labels = np.empty(n, dtype=np.int32)
        self.points = np.empty(n * d if self.cached else 0)
        self.assign = np.full(n, -1, dtype=np.int32)
        self.centroids = np.zeros((k, d))
        self.d2 = np.empty(0)
        self.block_d2 = np.zeros(self.blocks)
        self.block_sums = np.empty((0, k, d))
        self.block_counts = np.empty((0, k), dtype=np.int64)
        self.block_inertia = np.zeros(self.blocks)
        self.block_changes = np.zeros(self.blocks, dtype=np.int64)
        self.init_key = stream_key_py(params.seed, INIT_STREAM)
        self.phase = "generate"
        self.chosen = 0  # centroids chosen by k-means++
        self.next_block = 0
        self.passes_done = 0
        self.total_passes = 1 + (k - 1) + params.max_iterations
        self.iterations = 0
        self.converged = False
        self.inertia_history: list[float] = []
        regenerate = 0 if self.cached else config.KMEANS_GENERATE_TERMS
        per_block = BLOCK * d
        self.chunk_blocks = {
            "generate": max(
                1, config.KMEANS_CHUNK_TERMS // (per_block * config.KMEANS_GENERATE_TERMS)
            ),
            "seed": max(1, config.KMEANS_CHUNK_TERMS // (per_block * (1 + regenerate))),
            "lloyd": max(1, config.KMEANS_CHUNK_TERMS // (per_block * (k + regenerate))),
        }
        self._result: JSONDict | None = None

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def progress(self) -> float:
        if self.done:
            return 1.0
        return (self.passes_done + self.next_block / self.blocks) / self.total_passes

    def _point(self, i: int) -> Any:
        p = self.params
        return _point(
            self.points, self.cached, p.seed, p.n, p.dimensions, p.spread, self.centres,
            self.labels, i,
        )  # fmt: skip

    def step(self) -> None:
        if self.done:
            return
        first = self.next_block
        count = min(self.chunk_blocks[self.phase], self.blocks - first)
        p = self.params
        if self.phase == "generate":
            _labels(p.seed, p.n, p.clusters, first, count, self.labels)
            if self.cached:
                _generate(
                    p.seed,
                    p.n,
                    p.dimensions,
                    p.spread,
                    self.centres,
                    self.labels,
                    first,
                    count,
                    self.points,
                )
        elif self.phase == "seed":
            _min_d2_blocks(
                self.points, self.cached, p.seed, p.n, p.dimensions, p.spread, self.centres,
                self.labels, self.centroids[self.chosen - 1], self.chosen == 1, self.d2,
                first, count, self.block_d2,
            )  # fmt: skip
        else:
            _assign_blocks(
                self.points, self.cached, p.seed, p.n, p.dimensions, p.spread, self.centres,
                self.labels, np.ascontiguousarray(self.centroids.T), self.assign,
                first, count, self.block_sums, self.block_counts, self.block_inertia,
                self.block_changes,
            )  # fmt: skip
        self.next_block = first + count
        if self.next_block == self.blocks:
            self.next_block = 0
            self.passes_done += 1
            self._finish_pass()

    def _finish_pass(self) -> None:
        p = self.params
        if self.phase == "generate":
            u = uniform_at_py(self.init_key, 0)
            self.centroids[0] = self._point(min(int(u * p.n), p.n - 1))
            self.chosen = 1
            self.phase = "seed"
            self.d2 = np.empty(p.n)
        elif self.phase == "seed":
            u = uniform_at_py(self.init_key, self.chosen)
            self.centroids[self.chosen] = self._point(int(_pick(self.d2, self.block_d2, p.n, u)))
            self.chosen += 1
        else:
            moved = self.centroids.copy()
            inertia, changes = _combine(
                self.block_sums, self.block_counts, self.block_inertia, self.block_changes, moved
            )
            self.iterations += 1
            self.inertia_history.append(float(inertia))
            self.converged = int(changes) == 0
            if self.converged or self.iterations == p.max_iterations:
                self._finish(float(inertia))
                return
            self.centroids = moved
        if self.phase == "seed" and self.chosen == p.k:
            self.start_lloyd()

    def start_lloyd(self) -> None:
        """Leave k-means++ for Lloyd's iterations from the current ``centroids`` (the job
        does this itself once k-means++ is done; benchmarks call it to time a Lloyd step
        from chosen centroids)."""
        p = self.params
        self.phase = "lloyd"
        self.next_block = 0
        self.d2 = np.empty(0)
        self.block_sums = np.empty((self.blocks, p.k, p.dimensions))
        self.block_counts = np.empty((self.blocks, p.k), dtype=np.int64)
        self.passes_done = 1 + (p.k - 1)

    def _finish(self, inertia: float) -> None:
        p = self.params
        self._result = {
            "k": p.k,
            "iterations": self.iterations,
            "converged": self.converged,
            "inertia": inertia,
            "centroids": self.centroids.tolist(),
            "recoveredFraction": float(_purity(self.assign, self.labels, p.k, p.clusters)),
        }

    def partial_result(self) -> JSONDict | None:
        return None

    def result(self) -> JSONDict:
        if self._result is None:
            raise RuntimeError("the job is not done")
        return self._result


def k_means(
    params: KMeansParams, cache_coordinates: int = config.KMEANS_CACHE_COORDINATES
) -> KMeansJob:
    """Run a whole k-means job; the returned job holds the result and the inertia history.

    Parameters
    ----------
    params : KMeansParams
        Validated parameters.
    cache_coordinates : int
        Keep the points in memory when ``n * dimensions`` is at most this, else regenerate
        them on every pass (same result).

    Returns
    -------
    KMeansJob
        Done; ``result()`` gives ``k, iterations, converged, inertia, centroids`` (k lists
        of ``dimensions`` floats) and ``recoveredFraction``.
    """
    job = KMeansJob(params, cache_coordinates)
    while not job.done:
        job.step()
    return job


def start(params: KMeansParams) -> KMeansJob:
    """A :class:`KMeansJob` for validated ``params``."""
    return KMeansJob(params)


def warm_up() -> None:
    """Compile or load from cache every kernel, for cached and regenerated points."""
    params = KMeansParams(n=8, dimensions=2, k=2, clusters=2, spread=0.1, max_iterations=2, seed=0)
    k_means(params)
    k_means(params, cache_coordinates=0)
