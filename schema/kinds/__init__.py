"""The GraphQL side of every calculation kind: one module per kind holding its input
type, result type (with ``from_json``) and enums, and declaring its :class:`KindSchema`.

:data:`KIND_SCHEMAS` is the one list; ``CalculationInput`` (``schema/inputs.py``) and the
``CalculationResult`` union (``schema/types.py``) are assembled from it, in this order.
"""

from __future__ import annotations

from typing import Any

from crunchql.schema.kinds import (
    k_means,
    mandelbrot,
    monte_carlo_pi,
    n_body,
    option_pricing,
    prime_count,
)
from crunchql.schema.kinds.base import KindSchema

KIND_SCHEMAS: tuple[KindSchema[Any], ...] = (
    monte_carlo_pi.SCHEMA,
    option_pricing.SCHEMA,
    prime_count.SCHEMA,
    mandelbrot.SCHEMA,
    n_body.SCHEMA,
    k_means.SCHEMA,
)

BY_KIND: dict[str, KindSchema[Any]] = {schema.kind.name: schema for schema in KIND_SCHEMAS}
"""The schema of each kind by its catalog name (the name stored with a calculation)."""
