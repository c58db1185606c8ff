"""The catalog: every calculation kind by its GraphQL input field name.

Adding a kind means one module in ``compute/`` that exposes ``KIND`` and one line here.
"""

from __future__ import annotations

from crunchql.compute import mandelbrot, monte_carlo_pi, n_body, option_pricing, prime_count
from crunchql.compute.base import Kind

KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        monte_carlo_pi.KIND,
        option_pricing.KIND,
        prime_count.KIND,
        mandelbrot.KIND,
        n_body.KIND,
    )
}


def get_kind(name: str) -> Kind:
    """The kind called ``name``; KeyError when there is none."""
    return KINDS[name]


def warm_up_all() -> None:
    """Compile or load every kernel, so that the first job pays no compilation."""
    for kind in KINDS.values():
        kind.warm_up()
