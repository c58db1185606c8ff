"""nBody RANDOM_CLUSTER on a CUDA GPU: the CPU leapfrog, bitwise.

The CPU kernel (:mod:`crunchql.compute.n_body`) advances a softened all-pairs
kick-drift-kick leapfrog; body ``i``'s acceleration adds
``mu_j (x_j - x_i) / (r**2 + eps**2)**1.5`` over ``j`` ascending. Every operation there is
an IEEE add, multiply, divide or square root, and all four are correctly rounded on a GPU
too, so written without fused multiply-adds (:mod:`.compat`) and summed in the same order
the GPU's positions, velocities and accelerations are bitwise the CPU's, step after step,
and so is any energy computed from them.

One CUDA block per body keeps that order and still spreads the work: its threads compute
the terms of ``THREADS`` consecutive bodies ``j`` at a time into shared memory, then
thread 0 adds the tile's terms to the body's sums in ``j`` order (``j = i`` skipped, as
on the CPU). The kicks and drifts are element-wise kernels; each step is the CPU's
``v += a dt/2; x += v dt; a = a(x); v += a dt/2``.

Entry points: :func:`accelerations`, :func:`leapfrog` (the CPU kernels' arguments),
:func:`warm_up`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from crunchql.compute.gpu.compat import SIMULATOR, add, mul

TILE = 128
"""Most threads per body (the shared tile's length)."""
THREADS = 4 if SIMULATOR else TILE
"""Threads per body (simulator: few, every thread is a Python thread)."""
ELEMENT_THREADS = 32 if SIMULATOR else 256
"""Threads per block of the element-wise kick and drift kernels."""


@cuda.jit
def _accel_kernel(pos, mu, eps2, acc):
    i = cuda.blockIdx.x
    t = cuda.threadIdx.x
    w = cuda.blockDim.x
    n = mu.shape[0]
    tx = cuda.shared.array(TILE, np.float64)
    ty = cuda.shared.array(TILE, np.float64)
    tz = cuda.shared.array(TILE, np.float64)
    xi = pos[i, 0]
    yi = pos[i, 1]
    zi = pos[i, 2]
    ax = 0.0
    ay = 0.0
    az = 0.0
    for base in range(0, n, w):
        j = base + t
        if j < n and j != i:
            dx = add(pos[j, 0], -xi)
            dy = add(pos[j, 1], -yi)
            dz = add(pos[j, 2], -zi)
            r2 = add(add(add(mul(dx, dx), mul(dy, dy)), mul(dz, dz)), eps2)
            s = mu[j] / mul(r2, math.sqrt(r2))
            tx[t] = mul(dx, s)
            ty[t] = mul(dy, s)
            tz[t] = mul(dz, s)
        cuda.syncthreads()
        if t == 0:
            for k in range(min(w, n - base)):
                if base + k != i:
                    ax = add(ax, tx[k])
                    ay = add(ay, ty[k])
                    az = add(az, tz[k])
        cuda.syncthreads()
    if t == 0:
        acc[i, 0] = ax
        acc[i, 1] = ay
        acc[i, 2] = az


@cuda.jit
def _kick_drift_kernel(pos, vel, acc, kicks, half_dt, dt):
    """``kicks`` times ``v += a dt/2`` (the last step's closing kick and this step's
    opening one use the same ``a``), then ``x += v dt``, per coordinate."""
    e = cuda.grid(1)
    if e >= pos.shape[0] * 3:
        return
    i = e // 3
    k = e - 3 * i
    v = vel[i, k]
    for _ in range(kicks):
        v = add(v, mul(half_dt, acc[i, k]))
    vel[i, k] = v
    pos[i, k] = add(pos[i, k], mul(dt, v))


@cuda.jit
def _kick_kernel(vel, acc, half_dt):
    e = cuda.grid(1)
    if e >= vel.shape[0] * 3:
        return
    i = e // 3
    k = e - 3 * i
    vel[i, k] = add(vel[i, k], mul(half_dt, acc[i, k]))


def _launch_accelerations(d_pos, d_mu, eps2: float, d_acc, threads: int) -> None:
    if not 1 <= threads <= TILE:
        raise ValueError(f"threads must be 1 .. {TILE}")
    _accel_kernel[d_mu.shape[0], threads](d_pos, d_mu, float(eps2), d_acc)


def accelerations(
    pos: np.ndarray, mu: np.ndarray, eps2: float, threads: int = THREADS
) -> np.ndarray:
    """Softened accelerations of every body (as ``compute.n_body._accelerations_serial``).

    Parameters
    ----------
    pos : np.ndarray
        float64, shape ``(n, 3)``, AU.
    mu : np.ndarray
        float64, shape ``(n,)``, ``4 pi**2 m / M_sun``.
    eps2 : float
        Softening length squared, AU**2.
    threads : int
        Threads per body, 1 .. ``TILE``; never changes the result.

    Returns
    -------
    np.ndarray
        float64, shape ``(n, 3)``, AU/year**2.
    """
    d_pos = cuda.to_device(np.ascontiguousarray(pos, dtype=np.float64))
    d_mu = cuda.to_device(np.ascontiguousarray(mu, dtype=np.float64))
    d_acc = cuda.device_array(d_pos.shape, dtype=np.float64)
    _launch_accelerations(d_pos, d_mu, eps2, d_acc, threads)
    return np.asarray(d_acc.copy_to_host())


def launch_leapfrog(
    d_pos, d_vel, d_acc, d_mu, dt: float, eps2: float, steps: int, threads: int = THREADS
) -> None:
    """``steps`` leapfrog steps on device arrays, in place; ``d_acc`` holds a(pos) on entry
    and exit (as ``compute.n_body._leapfrog_serial``). Asynchronous."""
    n = d_mu.shape[0]
    half_dt = 0.5 * float(dt)
    grid = -(-3 * n // ELEMENT_THREADS)
    for step in range(steps):
        # the previous step's closing kick is fused with this step's opening kick
        kicks = 1 if step == 0 else 2
        _kick_drift_kernel[grid, ELEMENT_THREADS](d_pos, d_vel, d_acc, kicks, half_dt, dt)
        _launch_accelerations(d_pos, d_mu, eps2, d_acc, threads)
    if steps > 0:
        _kick_kernel[grid, ELEMENT_THREADS](d_vel, d_acc, half_dt)


def leapfrog(
    pos: np.ndarray,
    vel: np.ndarray,
    acc: np.ndarray,
    mu: np.ndarray,
    dt: float,
    eps2: float,
    steps: int,
    threads: int = THREADS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``steps`` kick-drift-kick steps from ``(pos, vel)`` with ``acc = a(pos)``.

    Parameters
    ----------
    pos, vel, acc : np.ndarray
        float64, shape ``(n, 3)``: AU, AU/year, AU/year**2 (``acc`` from
        :func:`accelerations` or the CPU kernel); not modified.
    mu : np.ndarray
        float64, shape ``(n,)``.
    dt : float
        Years.
    eps2 : float
        Softening length squared.
    steps : int
        >= 0.
    threads : int
        Threads per body; never changes the result.

    Returns
    -------
    pos, vel, acc : np.ndarray
        The state after ``steps`` steps (new arrays), bitwise the CPU kernel's.
    """
    d_pos, d_vel, d_acc = (
        cuda.to_device(np.array(a, dtype=np.float64, order="C")) for a in (pos, vel, acc)
    )
    d_mu = cuda.to_device(np.ascontiguousarray(mu, dtype=np.float64))
    launch_leapfrog(d_pos, d_vel, d_acc, d_mu, dt, eps2, steps, threads)
    return (
        np.asarray(d_pos.copy_to_host()),
        np.asarray(d_vel.copy_to_host()),
        np.asarray(d_acc.copy_to_host()),
    )


def warm_up() -> None:
    """Compile the three kernels."""
    pos = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    leapfrog(pos, np.zeros_like(pos), np.zeros_like(pos), np.ones(2), 0.01, 0.01, 2)
