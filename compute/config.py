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

# ---- primeCount -------------------------------------------------------------------------
#
# Cost model: ~0.5 ns per number sieved per core near 10**10 (less below: the work per
# number grows like log log x), so MAX_PRIME_LIMIT = 10**10 takes ~3 s on 2 cores of an
# Intel Xeon with numba 0.68.

MAX_PRIME_LIMIT = 10**10
"""Largest accepted ``limit`` (the contract's bound)."""
SEGMENT_BYTES = 128 * 1024
"""Sieve bytes per segment (30 numbers each): 128 KiB sits in the L2 cache (2 MiB per core).
Measured at 10**10 on a noisy 2-core VM: 32 KiB ~0.6-0.9, 128 KiB ~0.5-0.7 ns per number."""
BLOCK_SEGMENTS = 4
"""Segments per block, the unit of parallel work (4 * 128 KiB * 30 = 15.7 million numbers)."""
LARGE_PRIME_BYTES = SEGMENT_BYTES // 4
"""Primes above this walk their multiples in order instead of eight strided loops."""
PRIME_CHUNK_BLOCKS = 24
"""Blocks per chunk (one ``step``): 3.8 * 10**8 numbers, ~60-120 ms on 2 cores."""
PRIME_TIME_LIMIT_SECONDS = 120.0

# ---- mandelbrot -------------------------------------------------------------------------
#
# Cost model: the work is pixels x iterations actually run. One iteration is a chain of
# dependent multiply, subtract and add (~12 cycles of latency), ~4 ns on one core of the
# 2-core Xeon VM, so ~5 * 10**8 iterations/s on 2 cores (measured 3.9 s for 512 x 512 x 2000
# inside a period-3 bulb on a loaded machine). Escaped pixels stop early and cardioid/bulb
# pixels cost nothing (1024 x 1024 x 1000 over the default window: ~0.1 s), so the bound
# below is the worst case: a window inside the set but off the cardioid and the 2-bulb.

MAX_SIDE = 4096
"""Largest width and height (the contract's bound)."""
MAX_ITERATIONS = 100_000
MAX_PIXEL_ITERATIONS = 2**35
"""Upper bound of width * height * maxIterations, 3.4 * 10**10 (e.g. 4096 x 4096 x 2048 or
1024 x 1024 x 32768): at most ~70 s on 2 idle cores, a few minutes on loaded ones."""
DEFAULT_WINDOW = (-2.5, 1.0, -1.25, 1.25)
"""(xMin, xMax, yMin, yMax) when the input leaves them out."""
MAX_ABS_COORDINATE = 1e6
"""Window corners must lie within this; the set lies in |c| <= 2 anyway."""
MANDEL_CHUNK_ITERATIONS = 5 * 10**7
"""Worst-case iterations per chunk (one band of rows, at least 2 rows): <= ~100 ms on 2
cores unless a single row costs more (4096 x 100000 iterations: ~0.8 s for 2 rows)."""
PNG_COMPRESS_LEVEL = 1
"""zlib level for the PNG. Palette images are one byte per pixel, so the largest image
(4096 x 4096) is 16.8 MB before compression and at most ~17 MB as PNG even for noise
(~22 MB in base64); typical renders compress 5-20x (the default view at 4096 x 4096 x 500:
0.9 MB of PNG). Level 1 keeps the encoding step (the job's last) under ~1 s."""
MANDEL_TIME_LIMIT_SECONDS = 600.0

# ---- nBody ------------------------------------------------------------------------------
#
# Cost model: the unit of work is one pair interaction (a body's acceleration from one
# other body: ~20 flops with a square root and a division), ~5 ns on one core of the 2-core
# Xeon VM (1000 bodies x 10 steps: 0.042 s parallel, 0.055 s serial on a loaded machine).
# A leapfrog step costs bodies**2 of them. The bound MAX_BODY_PAIR_STEPS = 2.5 * 10**10
# (e.g. 5000 bodies x 1000 steps) is ~1-2 minutes on 2 cores.

MAX_BODIES = 5000
MIN_BODIES = 2
DEFAULT_BODIES = 1000
MAX_NBODY_STEPS = 10**6
"""Most time steps of one run (optionPricing's ``MAX_STEPS`` is another bound)."""
MAX_DT = 1.0
"""Largest time step in years (the outer planets' shortest period is ~12 years)."""
MAX_BODY_PAIR_STEPS = 25 * 10**9
"""Upper bound of bodies**2 * steps."""
SOFTENING = 0.05
"""Plummer softening length eps of RANDOM_CLUSTER in AU, about half the mean distance
between neighbours at 5000 bodies (0.09 AU); it bounds the force of close encounters."""
NBODY_CHUNK_PAIRS = 3 * 10**7
"""Pair interactions per chunk (one ``step`` runs max(1, this // bodies**2) time steps),
~100 ms on 2 cores."""
NBODY_TIME_LIMIT_SECONDS = 600.0

# ---- kMeans -----------------------------------------------------------------------------
#
# Cost model: the unit of work is one point-centroid-coordinate term (x - c)**2 of the
# assignment step, vectorised over centroids: ~0.2-0.5 ns per term on 2 cores. One Lloyd
# iteration costs n * dimensions * k terms, so at the bound MAX_KMEANS_WORK = 10**10 it
# takes a few seconds, and k-means++ initialisation about one iteration more. Generating
# one coordinate (half a Box-Muller transform) costs ~10-20 ns. The largest step, one
# Lloyd block of 4096 points x 64 dimensions x 256 centroids with its points regenerated,
# took ~13 ms, a k-means++ step of 7 such blocks ~46 ms (benchmarks/kernels.py, kMeans).

MAX_KMEANS_POINTS = 10**7
MIN_KMEANS_POINTS = 2
MAX_KMEANS_DIMENSIONS = 64
MAX_KMEANS_K = 256
MAX_KMEANS_CLUSTERS = 256
MAX_KMEANS_SPREAD = 10.0
DEFAULT_KMEANS_SPREAD = 0.05
MAX_KMEANS_ITERATIONS = 1000
DEFAULT_KMEANS_ITERATIONS = 100
MAX_KMEANS_WORK = 10**10
"""Upper bound of n * dimensions * k (the contract's bound)."""
KMEANS_BLOCK_POINTS = 4096
"""Points per block: the unit of parallel work and of the fixed-order sums. Each block
has its own random streams and its own partial sums, so changing it changes results
(in the last bits of sums, and the points drawn)."""
KMEANS_CACHE_COORDINATES = 2**25
"""Most coordinates (n * dimensions) kept in memory (256 MiB of float64). Larger inputs
regenerate each block's points from the streams on every pass, which gives the same
numbers bit for bit at a cost of ~10-20 ns per coordinate and pass."""
KMEANS_CHUNK_TERMS = 2**25
"""Target work per chunk (one ``step``) in assignment terms; generating a coordinate counts
as KMEANS_GENERATE_TERMS terms. A chunk is at least one block: the largest block is
4096 points x 64 dimensions x 256 centroids = 6.7 * 10**7 terms. Never changes the result."""
KMEANS_GENERATE_TERMS = 16
KMEANS_TIME_LIMIT_SECONDS = 600.0
