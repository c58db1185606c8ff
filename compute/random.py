"""The shared counter-based random number generator of the compute kernels.

Every random number is a pure function of ``(seed, block, index)``, so a kernel can
hand blocks to threads in any order and still produce bitwise the same result, and a
reference implementation (pure Python, NumPy, C) can reproduce any single number
without generating the ones before it. The algorithm, fixed by the C reference
benchmark, is SplitMix64's finaliser used as a hash::

    mix64(z)        = z ^= z >> 30; z *= 0xBF58476D1CE4E5B9;
                      z ^= z >> 27; z *= 0x94D049BB133111EB; z ^ (z >> 31)
    key(seed, b)    = mix64(seed * GAMMA + b + 1)           GAMMA = 0x9E3779B97F4A7C15
    uint64(key, i)  = mix64(key + i * GAMMA)
    double(key, i)  = (uint64(key, i) >> 11) * 2**-53       in [0, 1), 53 random bits

all in wrapping ``uint64`` arithmetic. Normal variates use Box-Muller on consecutive
pairs of doubles (see :func:`normal_pair`).

The numba helpers below take and return ``np.uint64``; numba promotes a mix of
``uint64`` and ``int64`` to ``float64``, so every operand is cast explicitly. Plain
Python twins (suffix ``_py``) work on Python ints masked to 64 bits and are used by
the pure-Python implementations and the tests.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

GAMMA = 0x9E3779B97F4A7C15
"""The golden-ratio increment of SplitMix64 (odd, so ``i * GAMMA`` is a bijection)."""
MIX_1 = 0xBF58476D1CE4E5B9
MIX_2 = 0x94D049BB133111EB
MASK64 = (1 << 64) - 1
TO_UNIT = 2.0**-53
"""Scale of a 53-bit integer to a double in [0, 1)."""
TWO_PI = 2.0 * math.pi

_GAMMA = np.uint64(GAMMA)
_MIX_1 = np.uint64(MIX_1)
_MIX_2 = np.uint64(MIX_2)
_ONE = np.uint64(1)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)


# ---- numba helpers (inlined into the kernels) -----------------------------------------


@njit(inline="always", cache=True)
def mix64(z):  # type: ignore[no-untyped-def]
    """SplitMix64 finaliser, a bijection of ``uint64`` with good avalanche.

    Parameters
    ----------
    z : np.uint64

    Returns
    -------
    np.uint64
        ``z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB;
        z ^ (z >> 31)``, wrapping modulo 2**64.
    """
    z = np.uint64(z)
    z = (z ^ (z >> _S30)) * _MIX_1
    z = (z ^ (z >> _S27)) * _MIX_2
    return z ^ (z >> _S31)


@njit(inline="always", cache=True)
def stream_key(seed, block):  # type: ignore[no-untyped-def]
    """The key of the stream ``(seed, block)``.

    Parameters
    ----------
    seed : int
        0 .. 2**63-1 (the kinds use 0 .. 2**31-1).
    block : int
        Block index, >= 0.

    Returns
    -------
    np.uint64
        ``mix64(seed * GAMMA + block + 1)`` in wrapping uint64 arithmetic.
    """
    return mix64(np.uint64(seed) * _GAMMA + np.uint64(block) + _ONE)


@njit(inline="always", cache=True)
def uint64_at(key, i):  # type: ignore[no-untyped-def]
    """The ``i``-th uint64 of the stream with ``key``: ``mix64(key + i * GAMMA)``.

    Parameters
    ----------
    key : np.uint64
        From :func:`stream_key`.
    i : int
        Index in the stream, >= 0.

    Returns
    -------
    np.uint64
    """
    return mix64(np.uint64(key) + np.uint64(i) * _GAMMA)


@njit(inline="always", cache=True)
def bits_to_unit(u):  # type: ignore[no-untyped-def]
    """Map a uint64 to a double in [0, 1): ``(u >> 11) * 2**-53``.

    The 53-bit value fits an int64 exactly, and converting from a signed integer is a
    single instruction, unlike the unsigned conversion.

    Parameters
    ----------
    u : np.uint64

    Returns
    -------
    float
        In [0, 1), a multiple of 2**-53.
    """
    return np.float64(np.int64(np.uint64(u) >> _S11)) * TO_UNIT


@njit(inline="always", cache=True)
def uniform_at(key, i):  # type: ignore[no-untyped-def]
    """The ``i``-th double in [0, 1) of the stream with ``key``.

    Parameters
    ----------
    key : np.uint64
    i : int

    Returns
    -------
    float
        ``(uint64_at(key, i) >> 11) * 2**-53``.
    """
    return bits_to_unit(uint64_at(key, i))


@njit(inline="always", cache=True)
def box_muller(u1, u2):  # type: ignore[no-untyped-def]
    """Two independent standard normals from two independent uniforms in [0, 1).

    ``r = sqrt(-2 log(1 - u1))``, ``theta = 2 pi u2``, returns ``(r cos theta,
    r sin theta)``. ``1 - u1`` lies in (0, 1], so the logarithm is finite; the
    largest ``|z|`` is ``sqrt(2 * 53 * log 2) ~ 8.57``, far beyond any tail that
    matters for prices. Exact (not an approximation of the normal CDF), and it uses
    a fixed number of uniforms, unlike rejection methods (polar, ziggurat), so the
    ``n``-th normal of a stream sits at a known place.

    Parameters
    ----------
    u1, u2 : float
        In [0, 1).

    Returns
    -------
    tuple of float
        ``(z0, z1)``.
    """
    r = math.sqrt(-2.0 * math.log(1.0 - u1))
    theta = TWO_PI * u2
    return r * math.cos(theta), r * math.sin(theta)


@njit(inline="always", cache=True)
def normal_pair(key, m):  # type: ignore[no-untyped-def]
    """Normals ``2m`` and ``2m + 1`` of the stream with ``key``.

    They are :func:`box_muller` of the doubles ``2m`` and ``2m + 1``: normal ``q`` of a
    stream uses the pair of doubles ``q & ~1`` and ``q | 1`` and takes the cosine
    branch for even ``q``, the sine branch for odd ``q``.

    Parameters
    ----------
    key : np.uint64
    m : int
        Pair index, >= 0.

    Returns
    -------
    tuple of float
        ``(z_2m, z_2m+1)``.
    """
    return box_muller(uniform_at(key, 2 * m), uniform_at(key, 2 * m + 1))


# ---- pure-Python twins (for references and the pure-Python benchmarks) -----------------


def mix64_py(z: int) -> int:
    """:func:`mix64` on Python ints (masked to 64 bits)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * MIX_1) & MASK64
    z = ((z ^ (z >> 27)) * MIX_2) & MASK64
    return z ^ (z >> 31)


def stream_key_py(seed: int, block: int) -> int:
    """:func:`stream_key` on Python ints."""
    return mix64_py(seed * GAMMA + block + 1)


def uint64_at_py(key: int, i: int) -> int:
    """:func:`uint64_at` on Python ints."""
    return mix64_py(key + i * GAMMA)


def uniform_at_py(key: int, i: int) -> float:
    """:func:`uniform_at` on Python ints."""
    return (uint64_at_py(key, i) >> 11) * TO_UNIT


def normal_at_py(key: int, q: int) -> float:
    """Normal ``q`` of the stream with ``key`` (see :func:`normal_pair`)."""
    u1 = uniform_at_py(key, q & ~1)
    u2 = uniform_at_py(key, q | 1)
    r = math.sqrt(-2.0 * math.log(1.0 - u1))
    theta = TWO_PI * u2
    return r * math.cos(theta) if q % 2 == 0 else r * math.sin(theta)


# ---- NumPy twins (vectorised over indices) -----------------------------------------------


def mix64_np(z: np.ndarray) -> np.ndarray:
    """:func:`mix64` on a uint64 array (array arithmetic wraps silently)."""
    z = z ^ (z >> _S30)
    z *= _MIX_1
    z ^= z >> _S27
    z *= _MIX_2
    z ^= z >> _S31
    return z


def stream_key_np(seed: int, block: int) -> np.uint64:
    """:func:`stream_key` for one stream, computed without NumPy scalar overflow warnings."""
    return np.uint64(stream_key_py(seed, block))


def uniforms_np(key: int, start: int, count: int) -> np.ndarray:
    """Doubles ``start .. start + count - 1`` of the stream with ``key``.

    Returns
    -------
    np.ndarray
        Shape ``(count,)``, float64 in [0, 1).
    """
    idx = np.arange(start, start + count, dtype=np.uint64)
    z = mix64_np(idx * _GAMMA + np.uint64(key))
    return (z >> _S11).astype(np.int64).astype(np.float64) * TO_UNIT


def normals_np(key: int, start_pair: int, pairs: int) -> np.ndarray:
    """Normals ``2 * start_pair .. 2 * (start_pair + pairs) - 1`` of the stream with ``key``.

    Returns
    -------
    np.ndarray
        Shape ``(2 * pairs,)``, float64, in stream order (cosine, sine, cosine, ...).
    """
    u = uniforms_np(key, 2 * start_pair, 2 * pairs)
    r = np.sqrt(-2.0 * np.log(1.0 - u[0::2]))
    theta = TWO_PI * u[1::2]
    out = np.empty(2 * pairs)
    out[0::2] = r * np.cos(theta)
    out[1::2] = r * np.sin(theta)
    return out
