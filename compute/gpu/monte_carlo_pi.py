"""monteCarloPi on a CUDA GPU: one thread block per random stream block.

The points are those of :mod:`crunchql.compute.monte_carlo_pi`: point ``i`` of block
``b`` is ``(x, y)`` = doubles ``2i`` and ``2i + 1`` of stream ``(seed, b)``, block ``b``
holding samples ``b * PI_BLOCK_SAMPLES ..`` (the last one may be short). CUDA block ``j``
counts stream block ``first_block + j``; its ``threads`` threads take the points
``i = t, t + threads, ...`` and add their counts into one shared counter, which thread 0
stores in ``out[j]``. ``x * x + y * y`` is rounded product by product (no FMA), as on
the CPU. Counts are integers, so per-block counts, and their total, are bitwise the CPU
kernel's for any ``threads``.

Entry points: :func:`count_blocks` (per-block counts, the CPU kernel's arguments),
:func:`count_inside` (the total for ``samples`` points), :func:`warm_up`.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from crunchql.compute.config import PI_BLOCK_SAMPLES
from crunchql.compute.gpu.compat import SIMULATOR, add, mul
from crunchql.compute.gpu.stream import stream_key, uniform_at

BLOCK = PI_BLOCK_SAMPLES
THREADS = 32 if SIMULATOR else 256
"""Threads per CUDA block: 256 on a GPU (4,096 points each for a full stream block);
32 in the simulator, where every thread is a Python thread."""


@cuda.jit
def _count_kernel(seed, first_block, samples, out):
    j = cuda.blockIdx.x
    t = cuda.threadIdx.x
    block = first_block + j
    n = min(BLOCK, samples - block * BLOCK)
    total = cuda.shared.array(1, np.int64)
    if t == 0:
        total[0] = 0
    cuda.syncthreads()
    key = stream_key(seed, block)
    inside = 0
    for i in range(t, n, cuda.blockDim.x):
        x = uniform_at(key, 2 * i)
        y = uniform_at(key, 2 * i + 1)
        if add(mul(x, x), mul(y, y)) < 1.0:
            inside += 1
    cuda.atomic.add(total, 0, inside)
    cuda.syncthreads()
    if t == 0:
        out[j] = total[0]


def launch(out, seed: int, first_block: int, samples: int, threads: int = THREADS) -> None:
    """Start the kernel for stream blocks ``first_block .. first_block + len(out) - 1``.

    ``out`` is an int64 device array; the launch is asynchronous (``cuda.synchronize()``).
    """
    _count_kernel[out.shape[0], threads](seed, first_block, samples, out)


def count_blocks(
    seed: int, first_block: int, n_blocks: int, samples: int, threads: int = THREADS
) -> np.ndarray:
    """Points inside the quarter disc in each of ``n_blocks`` stream blocks.

    Parameters
    ----------
    seed : int
        0 .. 2**31 - 1.
    first_block, n_blocks : int
        Stream blocks ``first_block .. first_block + n_blocks - 1``, all below
        ``ceil(samples / PI_BLOCK_SAMPLES)``.
    samples : int
        Total points of the run (fixes the length of the last block).
    threads : int
        Threads per CUDA block, 1 .. 1024; never changes the result.

    Returns
    -------
    np.ndarray
        int64, shape ``(n_blocks,)``: entry ``j`` is the CPU kernel's count for block
        ``first_block + j``.
    """
    out = cuda.device_array(n_blocks, dtype=np.int64)
    launch(out, seed, first_block, samples, threads)
    return np.asarray(out.copy_to_host())


def count_inside(samples: int, seed: int, threads: int = THREADS) -> int:
    """Points inside the quarter disc among the first ``samples`` points (1 .. 10**10)."""
    blocks = -(-samples // BLOCK)
    return int(count_blocks(seed, 0, blocks, samples, threads).sum())


def warm_up() -> None:
    """Compile the kernel (int64 and int64-array arguments)."""
    count_blocks(0, 0, 1, 16)
