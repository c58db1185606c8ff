"""The catalog: every calculation kind by its GraphQL input field name.

Light on purpose: it imports each kind's parameters class (plain Python) and names its
kernel module by path; the kernels (NumPy, numba, LLVM) load only when a job starts or
:func:`warm_up_all` runs, i.e. in workers and in the embedded mode, never in an API
process that only validates input.

Adding a kind takes, in this layer: a parameters module in ``compute/params/``, a kernel
module in ``compute/`` (``start(params) -> Job`` and ``warm_up()``), its tunables in
``compute/config.py`` and one entry here (see README, "Adding a kind").
"""

from __future__ import annotations

from typing import Any

from crunchql.compute import config
from crunchql.compute.base import Kind
from crunchql.compute.params.k_means import KMeansParams
from crunchql.compute.params.mandelbrot import MandelbrotParams
from crunchql.compute.params.monte_carlo_pi import MonteCarloPiParams
from crunchql.compute.params.n_body import NBodyParams
from crunchql.compute.params.option_pricing import OptionPricingParams
from crunchql.compute.params.prime_count import PrimeCountParams

MONTE_CARLO_PI = Kind(
    name="monteCarloPi",
    description=(
        "Estimates pi by drawing random points in the unit square and counting the share "
        "that falls inside the quarter circle, with its standard error."
    ),
    params=MonteCarloPiParams,
    kernel="crunchql.compute.monte_carlo_pi",
    time_limit_seconds=config.PI_TIME_LIMIT_SECONDS,
)
OPTION_PRICING = Kind(
    name="optionPricing",
    description=(
        "Prices a European or arithmetic-average Asian call or put by Monte Carlo simulation "
        "of geometric Brownian motion, with a standard error, a 95 % confidence interval "
        "and the Black-Scholes price for European options."
    ),
    params=OptionPricingParams,
    kernel="crunchql.compute.option_pricing",
    time_limit_seconds=config.OPTION_TIME_LIMIT_SECONDS,
)
PRIME_COUNT = Kind(
    name="primeCount",
    description="Counts the prime numbers up to a limit (at most 10^10) with a segmented sieve.",
    params=PrimeCountParams,
    kernel="crunchql.compute.prime_count",
    time_limit_seconds=config.PRIME_TIME_LIMIT_SECONDS,
)
MANDELBROT = Kind(
    name="mandelbrot",
    description=(
        "Renders the Mandelbrot set in a window of the complex plane as a PNG by escape time, "
        "with the share of pixels inside the set."
    ),
    params=MandelbrotParams,
    kernel="crunchql.compute.mandelbrot",
    time_limit_seconds=config.MANDEL_TIME_LIMIT_SECONDS,
)
N_BODY = Kind(
    name="nBody",
    description=(
        "Simulates gravitating bodies (the outer solar system or a random star cluster) "
        "and reports how well the total energy is conserved."
    ),
    params=NBodyParams,
    kernel="crunchql.compute.n_body",
    time_limit_seconds=config.NBODY_TIME_LIMIT_SECONDS,
)
K_MEANS = Kind(
    name="kMeans",
    description=(
        "Clusters points drawn around random centres (from the seed) with Lloyd's algorithm "
        "and k-means++ initialisation, and reports how well the true clusters were recovered."
    ),
    params=KMeansParams,
    kernel="crunchql.compute.k_means",
    time_limit_seconds=config.KMEANS_TIME_LIMIT_SECONDS,
)

KINDS: dict[str, Kind[Any]] = {
    kind.name: kind
    for kind in (MONTE_CARLO_PI, OPTION_PRICING, PRIME_COUNT, MANDELBROT, N_BODY, K_MEANS)
}


def warm_up_all() -> None:
    """Compile or load every kernel, so that the first job pays no compilation."""
    for kind in KINDS.values():
        kind.warm_up()
