"""Kernel tunables and input bounds, as plain constants.

``compute/`` reads no environment: change a value here, not in settings. Block sizes
fix how the random streams are laid out, so changing one changes every result for a
given seed; chunk sizes only change how often a runner regains control (progress,
cancellation) and never the result.

Timings quoted below were measured on 2 cores of an Intel Xeon (Emerald Rapids)
with numba 0.68.
"""

from __future__ import annotations

# ---- common ---------------------------------------------------------------------------

MAX_SEED = 2**31 - 1
"""Seeds are GraphQL ``Int`` values, 0 .. 2**31 - 1."""

FASTMATH_FLAGS = frozenset({"nnan", "ninf", "nsz"})
"""The fastmath flags the kernels use: only those that cannot change a finite result
(assume no NaN/inf, ignore the sign of zero). Reassociation ("reassoc") and FMA
contraction ("contract") stay off so kernels match their references bitwise."""

# ---- monteCarloPi -----------------------------------------------------------------------
#
# Cost model: one sample = two mix64 hashes + one compare, vectorised (AVX-512 vpmullq):
# ~2 ns per sample per core, ~1-1.5 ns per sample on 2 cores (same as gcc -O3 -fopenmp
# on the same algorithm). The worst allowed job, MAX_SAMPLES = 10**10, takes ~10-20 s.

MAX_SAMPLES = 10**10
PI_BLOCK_SAMPLES = 2**20
"""Samples per random stream (block); point ``i`` of block ``b`` uses doubles ``2i`` and
``2i + 1`` of stream ``(seed, b)``. Fixed: the decomposition never depends on threads."""
PI_CHUNK_BLOCKS = 64
"""Blocks per chunk (one ``step``): 2**26 samples, ~70-150 ms on 2 cores."""
PI_TIME_LIMIT_SECONDS = 120.0

# ---- optionPricing ----------------------------------------------------------------------
#
# Cost model: the unit of work is one antithetic pair advanced by one monitoring date
# (a "pair-step"): half a Box-Muller transform (log, sqrt, sin, cos and one hash per
# step), two exp and a few adds: ~45 ns per pair-step per core, ~25 ns on 2 cores
# (~4 * 10**7 pair-steps/s). A EUROPEAN payoff needs only S_T, simulated exactly in one
# jump, so it costs one pair-step per path whatever ``steps`` is (worst case 10**7 pairs:
# ~0.3 s); an ASIAN path costs ``steps`` pair-steps. MAX_PATH_STEPS = 2 * 10**9 bounds
# paths * steps for ASIAN at ~50 s on 2 cores (~2 minutes on a busy host).

MAX_PATHS = 10**7
"""Antithetic pairs; each pair simulates two price trajectories (Z and -Z)."""
MAX_STEPS = 10**4
MAX_PATH_STEPS = 2 * 10**9
"""Upper bound of paths * steps for ASIAN (the work, in pair-steps)."""
DEFAULT_STEPS_EUROPEAN = 1
DEFAULT_STEPS_ASIAN = 252
MAX_SPOT = 1e9
MAX_STRIKE = 1e9
MAX_VOLATILITY = 5.0
MAX_MATURITY = 100.0
MAX_ABS_RATE = 1.0
"""|rate| <= 100 % per year (continuously compounded); beyond it exp(-rT) over-/underflows
for long maturities and no real market quotes such rates."""
OPTION_BLOCK_PATHS = 1024
"""Most antithetic pairs per random stream (block)."""
OPTION_BLOCK_PATH_STEPS = 2**18
"""Most pair-steps per block (~10 ms on one core): a block holds
clamp(OPTION_BLOCK_PATH_STEPS // steps, 1, OPTION_BLOCK_PATHS) pairs. Both decide the
stream layout, so changing them changes results."""
OPTION_CHUNK_PATH_STEPS = 2**22
"""Target pair-steps per chunk (~100 ms on 2 cores); a chunk is at least one block per
thread. Never changes the result."""
OPTION_TIME_LIMIT_SECONDS = 600.0
CONFIDENCE_Z = 1.959963984540054
"""Two-sided 95 % normal quantile, for price +- z * standardError."""
