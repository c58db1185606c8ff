"""Monte Carlo estimate of pi: the share of uniform points of the unit square inside the
quarter disc, times four.

Point ``i`` of block ``b`` is ``(x, y)`` = doubles ``2i`` and ``2i + 1`` of the random
stream ``(seed, b)`` (:mod:`compute.random`); block ``b`` holds samples
``b * PI_BLOCK_SAMPLES ..`` (the last block may be short). With ``k`` of ``n`` points
satisfying ``x**2 + y**2 < 1``::

    estimate      = 4 k / n
    standardError = 4 sqrt(p (1 - p) / n),   p = k / n

Counts are integers, so the result is bitwise the same however the blocks are spread
over threads or chunks.

Entry points: :func:`start` and :func:`warm_up` (for the runner, through
:data:`crunchql.compute.catalog.MONTE_CARLO_PI`), :func:`estimate_pi`
(the whole computation at once), and for benchmarks :func:`count_inside_parallel`,
:func:`count_inside_serial`, :func:`estimate_pi_numpy`, :func:`estimate_pi_python`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from crunchql.compute import config
from crunchql.compute.base import JSONDict
from crunchql.compute.params.monte_carlo_pi import MonteCarloPiParams
from crunchql.compute.random import (
    TO_UNIT,
    bits_to_unit,
    mix64_np,
    stream_key,
    stream_key_py,
    uint64_at,
    uint64_at_py,
)
from crunchql.compute.sharding import block_range, check_cover, shard_count

BLOCK = config.PI_BLOCK_SAMPLES

# ---- kernels ----------------------------------------------------------------------------


@njit(inline="always", cache=True)
def _count_block(seed, block, n):  # type: ignore[no-untyped-def]
    """Points inside the quarter disc among the first ``n`` points of block ``block``."""
    key = stream_key(seed, block)
    inside = 0
    for i in range(n):
        x = bits_to_unit(uint64_at(key, 2 * i))
        y = bits_to_unit(uint64_at(key, 2 * i + 1))
        if x * x + y * y < 1.0:
            inside += 1
    return inside


# The parallel loop calls it, not an inlined copy: numba's parfor pass (Python 3.12)
# rejects the inlined loop's `inside += 1` inside a prange body ("unexpected cycle in
# lookup()"). One call per block of PI_BLOCK_SAMPLES points costs nothing measurable.
_count_block_call = njit(cache=True, nogil=True, fastmath=set(config.FASTMATH_FLAGS))(
    _count_block.py_func
)


@njit(cache=True, nogil=True, parallel=True, fastmath=set(config.FASTMATH_FLAGS))
def _count_parallel(seed, first_block, n_blocks, samples):  # type: ignore[no-untyped-def]
    """Points inside the quarter disc in blocks ``first_block .. first_block + n_blocks - 1``.

    Parameters
    ----------
    seed : int
    first_block, n_blocks : int
        The range of blocks (``PI_BLOCK_SAMPLES`` points each; the last may be short).
    samples : int
        Total points of the job (bounds the last block).

    Returns
    -------
    int
        The count, an integer sum: the same for any thread count.
    """
    inside = 0
    for j in prange(n_blocks):
        block = first_block + j
        n = min(BLOCK, samples - block * BLOCK)
        inside += _count_block_call(seed, block, n)  # integer sum: order-independent
    return inside


@njit(cache=True, nogil=True, fastmath=set(config.FASTMATH_FLAGS))
def _count_serial(seed, first_block, n_blocks, samples):  # type: ignore[no-untyped-def]
    """:func:`_count_parallel` on one thread."""
    inside = 0
    for j in range(n_blocks):
        block = first_block + j
        n = min(BLOCK, samples - block * BLOCK)
        inside += _count_block(seed, block, n)
    return inside


def _blocks(samples: int) -> int:
    return -(-samples // BLOCK)


def count_inside_parallel(samples: int, seed: int) -> int:
    """Points inside the quarter disc among the first ``samples`` points, on all threads.

    Parameters
    ----------
    samples : int
        Number of points, >= 1.
    seed : int
        0 .. 2**31 - 1.

    Returns
    -------
    int
        ``k = #{i < samples : x_i**2 + y_i**2 < 1}``.
    """
    return int(_count_parallel(seed, 0, _blocks(samples), samples))


def count_inside_serial(samples: int, seed: int) -> int:
    """:func:`count_inside_parallel` on one thread (the serial numba benchmark)."""
    return int(_count_serial(seed, 0, _blocks(samples), samples))


# ---- results ----------------------------------------------------------------------------


def pi_result(inside: int, samples: int) -> JSONDict:
    """The result for ``inside`` of ``samples`` points.

    Returns
    -------
    dict
        ``estimate = 4 k / n``, ``standardError = 4 sqrt(p (1 - p) / n)`` with ``p = k / n``
        (floats), and ``samples = n`` (int).
    """
    p = inside / samples
    return {
        "estimate": 4.0 * p,
        "standardError": 4.0 * math.sqrt(p * (1.0 - p) / samples),
        "samples": samples,
    }


def estimate_pi(samples: int, seed: int) -> JSONDict:
    """Estimate pi from ``samples`` points with the parallel kernel in one call.

    Parameters
    ----------
    samples : int
        1 .. 10**10 (not checked here; use ``KIND.validate`` for user input).
    seed : int
        0 .. 2**31 - 1.

    Returns
    -------
    dict
        See :func:`pi_result`.
    """
    return pi_result(count_inside_parallel(samples, seed), samples)


# ---- reference implementations for benchmarks (same streams) ----------------------------


def estimate_pi_numpy(samples: int, seed: int) -> JSONDict:
    """:func:`estimate_pi` vectorised with NumPy, one block (2**20 points) at a time.

    Uses ~50 MB of temporaries per block. Same points, so the same result as the kernel.
    """
    inside = 0
    for block in range(_blocks(samples)):
        n = min(BLOCK, samples - block * BLOCK)
        key = np.uint64(stream_key_py(seed, block))
        idx = np.arange(2 * n, dtype=np.uint64)
        bits = mix64_np(idx * np.uint64(0x9E3779B97F4A7C15) + key) >> np.uint64(11)
        u = bits.astype(np.int64).astype(np.float64) * TO_UNIT
        x, y = u[0::2], u[1::2]
        inside += int(np.count_nonzero(x * x + y * y < 1.0))
    return pi_result(inside, samples)


def estimate_pi_python(samples: int, seed: int) -> JSONDict:
    """:func:`estimate_pi` in pure Python (~1 microsecond per point). Same result."""
    inside = 0
    for block in range(_blocks(samples)):
        n = min(BLOCK, samples - block * BLOCK)
        key = stream_key_py(seed, block)
        for i in range(n):
            x = (uint64_at_py(key, 2 * i) >> 11) * TO_UNIT
            y = (uint64_at_py(key, 2 * i + 1) >> 11) * TO_UNIT
            if x * x + y * y < 1.0:
                inside += 1
    return pi_result(inside, samples)


# ---- the kind -----------------------------------------------------------------------------


class PiJob:
    """A pi estimate run chunk by chunk; each chunk is ``PI_CHUNK_BLOCKS`` blocks.

    ``first_block``/``stop_block`` restrict it to a shard's blocks (see
    :func:`start_shard`); the default is every block of the job.
    """

    def __init__(
        self, samples: int, seed: int, first_block: int = 0, stop_block: int | None = None
    ) -> None:
        self.samples = samples
        self.seed = seed
        self.first_block = first_block
        self.total_blocks = _blocks(samples) if stop_block is None else stop_block
        self.next_block = first_block
        self.inside = 0

    @property
    def done(self) -> bool:
        return self.next_block >= self.total_blocks

    @property
    def progress(self) -> float:
        span = self.total_blocks - self.first_block
        return 1.0 if self.done else (self.next_block - self.first_block) / span

    def _samples_done(self) -> int:
        return min(self.samples, self.next_block * BLOCK) - self.first_block * BLOCK

    def step(self) -> None:
        if self.done:
            return
        n_blocks = min(config.PI_CHUNK_BLOCKS, self.total_blocks - self.next_block)
        self.inside += int(_count_parallel(self.seed, self.next_block, n_blocks, self.samples))
        self.next_block += n_blocks

    def partial_result(self) -> JSONDict | None:
        n = self._samples_done()
        return None if n == 0 else pi_result(self.inside, n)

    def result(self) -> JSONDict:
        if not self.done:
            raise RuntimeError("the job is not done")
        return pi_result(self.inside, self.samples)


def start(params: MonteCarloPiParams) -> PiJob:
    """A :class:`PiJob` for validated ``params``."""
    return PiJob(params.samples, params.seed)


# ---- shards: contiguous ranges of blocks, combined by adding integer counts ------------------


def plan_shards(params: MonteCarloPiParams, shard_seconds: float) -> int:
    """Shards for ``params`` at ``shard_seconds`` of one core each (1: not split)."""
    cost = params.samples / config.PI_SAMPLES_PER_CORE_SECOND
    return shard_count(cost, shard_seconds, _blocks(params.samples))


class PiShardJob(PiJob):
    """The blocks of one shard; ``result()`` is the partial ``{"firstBlock", "stopBlock",
    "inside"}`` that :func:`combine` adds up."""

    def result(self) -> JSONDict:
        if not self.done:
            raise RuntimeError("the job is not done")
        return {"firstBlock": self.first_block, "stopBlock": self.total_blocks,
                "inside": self.inside}  # fmt: skip


def start_shard(params: MonteCarloPiParams, shard: int, shards: int) -> PiShardJob:
    """The job of shard ``shard`` (0-based) of ``shards``."""
    first, stop = block_range(_blocks(params.samples), shard, shards)
    return PiShardJob(params.samples, params.seed, first, stop)


def combine(params: MonteCarloPiParams, partials: list[JSONDict]) -> JSONDict:
    """The result from every shard's partial, in shard order: the unsplit job's result
    exactly (the inside-counts are integers)."""
    check_cover(partials, _blocks(params.samples))
    return pi_result(sum(int(partial["inside"]) for partial in partials), params.samples)


def warm_up() -> None:
    """Compile or load from cache both kernels (int64 arguments)."""
    _count_parallel(0, 0, 1, 16)
    _count_serial(0, 0, 1, 16)
