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
* On a GPU they differ by at most a few ulp per call; :mod:`.tolerance` bounds the
  resulting difference of every per-block sum, and of the price and standard error.

Entry points: :func:`block_sums` (the CPU kernel's arguments), :func:`launch` (on device
memory), :func:`warm_up`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from crunchql.compute.config import OPTION_BLOCK_PATHS
from crunchql.compute.gpu.compat import SIMULATOR, add, mul
from crunchql.compute.gpu.stream import normal_pair, stream_key
from crunchql.compute.gpu.tolerance import N_SUMS

THREADS = 8 if SIMULATOR else 128
"""Threads per CUDA block (simulator: few, every thread is a Python thread)."""


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


def launch(
    out,
    seed: int,
    first_block: int,
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
    threads: int | None = None,
) -> None:
    """Start the kernel for blocks ``first_block .. first_block + out.shape[0] - 1``.

    ``out`` is a float64 device array of shape (blocks, 5); the launch is asynchronous.
    ``threads`` defaults to ``THREADS``, or fewer whole warps when a block holds fewer pairs.
    """
    if not 1 <= block_pairs <= OPTION_BLOCK_PATHS:
        raise ValueError(f"block_pairs must be 1 .. {OPTION_BLOCK_PATHS}")
    if threads is None:
        threads = min(THREADS, 32 * -(-block_pairs // 32))
    _sums_kernel[out.shape[0], threads](
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
    threads: int | None = None,
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
    threads : int, optional
        Threads per CUDA block, 1 .. 1024; never changes the result.

    Returns
    -------
    np.ndarray
        float64, shape ``(n_blocks, 5)``: sum dY, sum dY**2, sum dX, sum dX**2, sum dX dY
        of each block, as the CPU kernel's ``out`` rows.
    """
    out = cuda.device_array((n_blocks, N_SUMS), dtype=np.float64)
    launch(
        out,
        seed,
        first_block,
        block_pairs,
        paths,
        steps,
        asian,
        phi,
        strike,
        x0,
        a,
        b,
        c_y,
        e_x,
        threads,
    )
    return np.asarray(out.copy_to_host())


def warm_up() -> None:
    """Compile the kernel."""
    block_sums(0, 0, 1, 2, 2, 2, True, 1.0, 100.0, math.log(100.0), 0.0, 0.01, 5.0, 5.0)
