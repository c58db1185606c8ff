"""Prime counting: pi(x), the number of primes p <= x, by a segmented sieve of Eratosthenes.

The sieve works on a mod-30 wheel: byte ``k`` of the sieve holds the eight numbers
``30 k + r`` with ``r`` in ``WHEEL = (1, 7, 11, 13, 17, 19, 23, 29)`` (the residues
coprime to 30), bit ``j`` for ``WHEEL[j]``; a set bit means "no factor found". So
multiples of 2, 3 and 5 never take space, and one byte covers 30 numbers.

* Pre-sieving: every segment starts as a copy of a periodic pattern from which the
  multiples of 7, 11, 13 and 17 are already removed (period 7*11*13*17 = 17017 bytes).
* Sieving: the multiples of a prime ``19 <= p <= sqrt(x)`` that the wheel keeps are
  ``p (30 s + WHEEL[w])``; for fixed ``w`` they all fall on one bit (that of
  ``p WHEEL[w] mod 30``) of the bytes ``p s + (p WHEEL[w]) // 30``. Primes up to
  ``config.LARGE_PRIME_BYTES`` run eight tight loops of stride ``p`` per segment, one
  per ``w``; larger primes, which hit a segment only a few times, walk their multiples
  in increasing order (one loop, one exit per segment). Crossing off starts at ``p**2``.
* Segments of ``config.SEGMENT_BYTES`` (128 KiB, L2-sized, 3.9 million numbers) are
  grouped into blocks of ``config.BLOCK_SEGMENTS`` segments. A block is the unit of
  parallel work: it finds every sieving prime's first multiple once and carries the
  positions from segment to segment.
* Counting: a SWAR popcount over the segment seen as uint64 words, after clearing
  the bit of 1 and the bits above ``x``; the primes 2 .. 17 are added separately.

Counts are integers summed per block, so the result is the same for any number of
threads or chunking, and for any segment and block size. The kernels take those sizes as
an argument (see :func:`_layout`) instead of reading them from :mod:`compute.config` as
globals: numba would freeze a global into its on-disk cache and not notice an edit of
``config.py``, while the wrappers here would use the new value. Checked against
pi(10**k) for k <= 10 and an independent Lucy_Hedgehog count in the tests.

Entry points: :data:`KIND` (validate/start/warm_up for the runner),
:func:`count_primes` (the whole count at once, parallel or serial), and for benchmarks
:func:`count_primes_numpy` and :func:`count_primes_python`.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit, prange

from crunchql.compute import config
from crunchql.compute.base import JSONDict
from crunchql.compute.params.prime_count import PrimeCountParams

# ---- the wheel ---------------------------------------------------------------------------

WHEEL = np.array([1, 7, 11, 13, 17, 19, 23, 29], dtype=np.int64)
"""The residues mod 30 coprime to 30; bit ``j`` of a sieve byte stands for ``WHEEL[j]``."""
_BIT_OF_RESIDUE = np.full(30, -1, dtype=np.int64)
_BIT_OF_RESIDUE[WHEEL] = np.arange(8)
_SMALL_PRIMES = (2, 3, 5, 7, 11, 13, 17)
"""Primes that are never counted from the sieve (the wheel and the pre-sieve remove them)."""
_PRESIEVE_PRIMES = np.array([7, 11, 13, 17], dtype=np.int64)
_PATTERN_PERIOD = 7 * 11 * 13 * 17
_FIRST_SIEVING_PRIME = 19
_KEEP_UP_TO = np.zeros(30, dtype=np.uint8)
"""``_KEEP_UP_TO[s]``: the bits of a byte whose numbers ``30 k + r`` have ``r <= s``."""
for _s in range(30):
    _KEEP_UP_TO[_s] = sum(1 << j for j in range(8) if WHEEL[j] <= _s)


# ---- kernels -------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _simple_sieve(n):  # type: ignore[no-untyped-def]
    """Primes ``p <= n`` (int64, ascending) by a plain byte sieve, for the sieving primes."""
    if n < 2:
        return np.empty(0, dtype=np.int64)
    is_prime = np.ones(n + 1, dtype=np.uint8)
    is_prime[0] = 0
    is_prime[1] = 0
    p = 2
    while p * p <= n:
        if is_prime[p]:
            for m in range(p * p, n + 1, p):
                is_prime[m] = 0
        p += 1
    return np.flatnonzero(is_prime).astype(np.int64)


@njit(cache=True, nogil=True)
def _presieve_pattern(length):  # type: ignore[no-untyped-def]
    """Sieve bytes ``0 .. length-1`` with the multiples of 7, 11, 13, 17 (themselves too) cleared.

    Periodic with period 17017 bytes; ``length = period + segment_bytes`` lets a
    segment starting at any byte ``k`` copy ``pattern[k % period:][:segment_bytes]``.
    """
    pattern = np.empty(length, dtype=np.uint8)
    for k in range(length):
        byte = 0
        for j in range(8):
            n = 30 * k + WHEEL[j]
            if n % 7 != 0 and n % 11 != 0 and n % 13 != 0 and n % 17 != 0:
                byte |= 1 << j
        pattern[k] = byte
    return pattern


@njit(inline="always")
def _popcount_bytes(seg, n):  # type: ignore[no-untyped-def]
    """Set bits in ``seg[:n]``; ``seg`` is zero-padded to a multiple of 8 bytes."""
    words = seg[: (n + 7) // 8 * 8].view(np.uint64)
    total = 0
    m1 = np.uint64(0x5555555555555555)
    m2 = np.uint64(0x3333333333333333)
    m4 = np.uint64(0x0F0F0F0F0F0F0F0F)
    h01 = np.uint64(0x0101010101010101)
    for w in range(words.size):
        x = words[w]
        x = x - ((x >> np.uint64(1)) & m1)
        x = (x & m2) + ((x >> np.uint64(2)) & m2)
        x = (x + (x >> np.uint64(4))) & m4
        total += np.int64((x * h01) >> np.uint64(56))  # type: ignore[assignment]
    return total


@njit(cache=True, nogil=True)
def _count_block(limit, primes, pattern, first_byte, n_bytes, seg_len, large_prime_bytes):  # type: ignore[no-untyped-def]
    """Primes > 17 among the numbers of sieve bytes ``first_byte .. first_byte + n_bytes - 1``.

    ``primes`` are the sieving primes 19 .. isqrt(limit); bytes past ``limit // 30`` are
    skipped, and numbers above ``limit`` in the last byte are not counted. Segments are
    ``seg_len`` bytes (``pattern`` holds at least ``17017 + seg_len``); primes above
    ``large_prime_bytes`` walk their multiples in order.
    """
    last_byte = limit // 30
    end = min(first_byte + n_bytes, last_byte + 1)
    if end <= first_byte:
        return 0
    seg = np.zeros(seg_len + 8, dtype=np.uint8)
    # the primes that sieve anything in this block: p**2 <= the block's last number
    n_active = 0
    while n_active < primes.size and primes[n_active] ** 2 < 30 * end:
        n_active += 1
    n_small = 0
    while n_small < n_active and primes[n_small] <= large_prime_bytes:
        n_small += 1
    # The multiples p m, m = 30 s + WHEEL[w], lie in byte p s + offs[t, w] at bit
    # masks[t, w]. Small primes: nxt[t, w] is the next byte (relative to first_byte) of
    # the class w. Large primes: nxt[t, 0] is p s and nxt[t, 1] is w of the next multiple.
    offs = np.empty((n_active, 8), dtype=np.int32)
    masks = np.empty((n_active, 8), dtype=np.uint8)
    nxt = np.empty((n_active, 8), dtype=np.int64)
    for t in range(n_active):
        p = primes[t]
        base = max(first_byte, p * p // 30)  # start in the byte of p**2
        for w in range(8):
            pm = p * WHEEL[w]
            offs[t, w] = pm // 30
            masks[t, w] = 255 ^ (1 << _BIT_OF_RESIDUE[pm % 30])
        s = base // p
        if t < n_small:
            for w in range(8):
                i = s * p + offs[t, w]
                nxt[t, w] = (i if i >= base else i + p) - first_byte
        else:
            w = 0
            while w < 8 and s * p + offs[t, w] < base:
                w += 1
            if w == 8:
                s += 1
                w = 0
            nxt[t, 0] = s * p - first_byte
            nxt[t, 1] = w
    total = 0
    k_lo = first_byte
    while k_lo < end:
        n = min(seg_len, end - k_lo)
        rel = k_lo - first_byte
        off = k_lo % _PATTERN_PERIOD
        seg[:n] = pattern[off : off + n]
        seg[n : n + 8] = 0
        hi = 30 * (k_lo + n)  # every number of the segment is below hi
        for t in range(n_small):
            p = primes[t]
            if p * p >= hi:
                break
            up = np.uint64(p)
            un = np.uint64(n)
            for w in range(8):
                # unsigned index: numba then emits no negative-index wraparound code
                i = np.uint64(nxt[t, w] - rel)  # >= 0: the next multiple is never behind
                mask = masks[t, w]
                while i < un:
                    seg[i] &= mask
                    i += up
                nxt[t, w] = np.int64(i) + rel
        for t in range(n_small, n_active):
            p = primes[t]
            if p * p >= hi:
                break
            b = nxt[t, 0] - rel
            w = nxt[t, 1]
            while True:
                i = b + offs[t, w]
                if i >= n:
                    break
                seg[i] &= masks[t, w]
                w += 1
                if w == 8:
                    w = 0
                    b += p
            nxt[t, 0] = b + rel
            nxt[t, 1] = w
        if k_lo == 0:
            seg[0] &= np.uint8(254)  # 1 is not prime
        if k_lo + n == last_byte + 1:
            seg[n - 1] &= _KEEP_UP_TO[limit % 30]
        total += _popcount_bytes(seg, n)
        k_lo += n
    return total


@njit(cache=True, nogil=True, parallel=True)
def _count_blocks_parallel(limit, primes, pattern, first_block, n_blocks, layout):  # type: ignore[no-untyped-def]
    """Primes > 17 in blocks ``first_block ..`` (``n_blocks`` of them); ``layout`` as
    :func:`_layout` returns it."""
    seg_len, block_segments, large_prime_bytes = layout
    block_bytes = seg_len * block_segments
    counts = np.zeros(n_blocks, dtype=np.int64)
    for b in prange(n_blocks):
        counts[b] = _count_block(
            limit,
            primes,
            pattern,
            (first_block + b) * block_bytes,
            block_bytes,
            seg_len,
            large_prime_bytes,
        )
    return counts.sum()


@njit(cache=True, nogil=True)
def _count_blocks_serial(limit, primes, pattern, first_block, n_blocks, layout):  # type: ignore[no-untyped-def]
    """:func:`_count_blocks_parallel` on one thread."""
    seg_len, block_segments, large_prime_bytes = layout
    block_bytes = seg_len * block_segments
    total = 0
    for b in range(n_blocks):
        total += _count_block(
            limit,
            primes,
            pattern,
            (first_block + b) * block_bytes,
            block_bytes,
            seg_len,
            large_prime_bytes,
        )
    return total


# ---- wrappers --------------------------------------------------------------------------------


def _layout() -> tuple[int, int, int]:
    """``(SEGMENT_BYTES, BLOCK_SEGMENTS, LARGE_PRIME_BYTES)`` from :mod:`compute.config`,
    read at call time and handed to the kernels as an argument (see the module docstring)."""
    return (
        int(config.SEGMENT_BYTES),
        int(config.BLOCK_SEGMENTS),
        int(config.LARGE_PRIME_BYTES),
    )


@functools.cache
def _pattern(segment_bytes: int) -> np.ndarray:
    """The pre-sieve pattern for segments of ``segment_bytes`` (built once per size)."""
    pattern: np.ndarray = _presieve_pattern(_PATTERN_PERIOD + segment_bytes)
    return pattern


def _count_blocks(
    limit: int, primes: np.ndarray, first_block: int, n_blocks: int, parallel: bool = True
) -> int:
    """Primes > 17 in sieve blocks ``first_block .. first_block + n_blocks - 1``."""
    layout = _layout()
    kernel = _count_blocks_parallel if parallel else _count_blocks_serial
    return int(kernel(limit, primes, _pattern(layout[0]), first_block, n_blocks, layout))


def _sieving_primes(limit: int) -> np.ndarray:
    primes: np.ndarray = _simple_sieve(math.isqrt(limit))
    sieving: np.ndarray = primes[primes >= _FIRST_SIEVING_PRIME]
    return sieving


def _small_count(limit: int) -> int:
    return sum(1 for p in _SMALL_PRIMES if p <= limit)


def _total_blocks(limit: int) -> int:
    block_bytes = config.SEGMENT_BYTES * config.BLOCK_SEGMENTS
    return limit // 30 // block_bytes + 1


def count_primes(limit: int, parallel: bool = True) -> int:
    """The number of primes ``p <= limit``, pi(limit), by the segmented wheel sieve.

    Parameters
    ----------
    limit : int
        0 .. 10**10 (not checked here beyond ``limit >= 0``; larger values work but the
        sieving-prime and block layout is only tuned up to 10**10).
    parallel : bool
        Spread blocks over numba's threads (default) or run on the calling thread.

    Returns
    -------
    int
        pi(limit), e.g. ``count_primes(10**10) == 455052511``.
    """
    if limit < 0:
        raise ValueError("limit must be >= 0")
    primes = _sieving_primes(limit)
    return _small_count(limit) + _count_blocks(limit, primes, 0, _total_blocks(limit), parallel)


def count_primes_numpy(limit: int) -> int:
    """pi(limit) by a vectorised NumPy odd-only sieve of the whole range at once.

    Memory is ``limit / 2`` bytes, so keep ``limit`` below ~10**9. Each prime
    ``p <= sqrt(limit)`` clears the odd multiples ``p**2, p**2 + 2p, ...`` with one
    strided slice assignment.

    Parameters
    ----------
    limit : int
        >= 0.

    Returns
    -------
    int
        pi(limit).
    """
    if limit < 2:
        return 0
    # odd[i] stands for 2 i + 1
    odd = np.ones((limit + 1) // 2, dtype=np.bool_)
    odd[0] = False
    for i in range(1, (math.isqrt(limit) - 1) // 2 + 1):
        if odd[i]:
            p = 2 * i + 1
            odd[p * p // 2 :: p] = False
    return 1 + int(np.count_nonzero(odd))


def count_primes_python(limit: int) -> int:
    """pi(limit) by a pure-Python odd-only sieve with explicit loops (interpreter-bound).

    About 0.1 microseconds per crossing-off: keep ``limit`` at or below ~10**7.

    Parameters
    ----------
    limit : int
        >= 0.

    Returns
    -------
    int
        pi(limit).
    """
    if limit < 2:
        return 0
    size = (limit + 1) // 2  # index i stands for 2 i + 1
    odd = bytearray([1]) * size
    odd[0] = 0
    i = 1
    while (2 * i + 1) ** 2 <= limit:
        if odd[i]:
            p = 2 * i + 1
            for m in range(p * p // 2, size, p):
                odd[m] = 0
        i += 1
    return 1 + sum(odd)


# ---- the kind ----------------------------------------------------------------------------------


class PrimeCountJob:
    """pi(limit) counted chunk by chunk; a chunk is ``config.PRIME_CHUNK_BLOCKS`` sieve blocks."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.primes = _sieving_primes(limit)
        self.total_blocks = _total_blocks(limit)
        self.next_block = 0
        self.count = _small_count(limit)

    @property
    def done(self) -> bool:
        return self.next_block >= self.total_blocks

    @property
    def progress(self) -> float:
        return 1.0 if self.done else self.next_block / self.total_blocks

    def step(self) -> None:
        if self.done:
            return
        n_blocks = min(config.PRIME_CHUNK_BLOCKS, self.total_blocks - self.next_block)
        self.count += _count_blocks(self.limit, self.primes, self.next_block, n_blocks)
        self.next_block += n_blocks

    def partial_result(self) -> JSONDict | None:
        return None

    def result(self) -> JSONDict:
        if not self.done:
            raise RuntimeError("the job is not done")
        return {"limit": self.limit, "count": self.count}


def start(params: PrimeCountParams) -> PrimeCountJob:
    """A :class:`PrimeCountJob` for validated ``params``."""
    return PrimeCountJob(params.limit)


def warm_up() -> None:
    """Compile or load from cache both block kernels (and the small sieve)."""
    count_primes(1000, parallel=True)
    count_primes(1000, parallel=False)
