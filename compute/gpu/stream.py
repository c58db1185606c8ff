"""The counter-based random stream of :mod:`crunchql.compute.random` as CUDA device functions.

Same algorithm, constants and casts as the CPU helpers (SplitMix64's finaliser as a hash
of ``(seed, block, index)``), so every uint64, uniform double and normal is bitwise the
CPU's for the same ``(seed, block, index)``. Box-Muller's ``log``, ``sqrt``, ``cos`` and
``sin`` come from libdevice on a GPU: ``sqrt`` is correctly rounded like the CPU's, the
other three may differ from glibc's in the last bits (see :mod:`.option_pricing`); its
products have no addend, so no FMA can form.

In the simulator the uint64 arithmetic runs on NumPy scalars, which wrap like the GPU
but warn on overflow; callers that run the simulator filter that warning.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from crunchql.compute.random import GAMMA, MIX_1, MIX_2, TO_UNIT, TWO_PI

_GAMMA = np.uint64(GAMMA)
_MIX_1 = np.uint64(MIX_1)
_MIX_2 = np.uint64(MIX_2)
_ONE = np.uint64(1)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)


@cuda.jit(device=True)
def mix64(z):
    """SplitMix64 finaliser of a ``np.uint64`` (as :func:`crunchql.compute.random.mix64`)."""
    z = np.uint64(z)
    z = (z ^ (z >> _S30)) * _MIX_1
    z = (z ^ (z >> _S27)) * _MIX_2
    return z ^ (z >> _S31)


@cuda.jit(device=True)
def stream_key(seed, block):
    """``mix64(seed * GAMMA + block + 1)``, the key of stream ``(seed, block)``."""
    return mix64(np.uint64(seed) * _GAMMA + np.uint64(block) + _ONE)


@cuda.jit(device=True)
def uniform_at(key, i):
    """Double ``i`` in [0, 1) of the stream with ``key``: ``(mix64(key + i GAMMA) >> 11) 2**-53``.

    The 53-bit integer converts exactly and the scale is a power of two, so this is exact
    on every device.
    """
    u = mix64(np.uint64(key) + np.uint64(i) * _GAMMA)
    return np.float64(np.int64(u >> _S11)) * TO_UNIT


@cuda.jit(device=True)
def normal_pair(key, m):
    """Normals ``2m`` (cosine branch) and ``2m + 1`` (sine branch) of the stream with ``key``."""
    u1 = uniform_at(key, 2 * m)
    u2 = uniform_at(key, 2 * m + 1)
    r = math.sqrt(-2.0 * math.log(1.0 - u1))
    theta = TWO_PI * u2
    return r * math.cos(theta), r * math.sin(theta)
