"""The contract between a calculation kind and whoever runs it.

A kind turns a raw input mapping (the GraphQL input object, camelCase keys, enums
as their names) into validated parameters, and those parameters into a
:class:`Job`: a computation split into chunks of well under a second each.
The runner (a Dramatiq actor, a notebook, a benchmark) drives it::

    params = kind.validate(raw)          # raises ParameterError before any kernel runs
    job = kind.start(params)
    while not job.done:
        job.step()                       # one chunk; releases the GIL inside the kernel
        report(job.progress, job.partial_result())
    result = job.result()

Between two ``step`` calls the runner may stop (cancel, time limit) and simply
drop the job. Results depend only on ``params`` (the seed included), never on the
number of threads, processes or how often ``step`` was called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

JSONDict = dict[str, Any]


class ParameterError(ValueError):
    """An input value outside what a kind accepts.

    ``field`` is the input field's name as the client wrote it (camelCase), and
    the message says the allowed range, e.g. ``"paths must be between 1 and 10000000"``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class Job(Protocol):
    """A chunked computation. See the module docstring for how it is driven."""

    @property
    def done(self) -> bool: ...

    @property
    def progress(self) -> float:
        """Fraction of the work done, 0.0 .. 1.0, never decreasing; 1.0 once done."""
        ...

    def step(self) -> None:
        """Run the next chunk (a no-op once done)."""
        ...

    def partial_result(self) -> JSONDict | None:
        """The running estimate in the shape of ``result()``, for kinds that converge; else None."""
        ...

    def result(self) -> JSONDict:
        """The final result (camelCase keys, JSON-serialisable). Only valid once ``done``."""
        ...


@dataclass(frozen=True)
class Kind:
    """One entry of the catalog."""

    name: str
    """The GraphQL input field name, e.g. ``"monteCarloPi"``."""
    description: str
    validate: Callable[[Mapping[str, Any]], JSONDict]
    """Check bounds, fill in defaults (drawing a seed when none was given) and return
    the parameters to store as the calculation's ``input``; raise ParameterError."""
    start: Callable[[JSONDict], Job]
    """Build a job from validated parameters."""
    warm_up: Callable[[], None]
    """Compile (or load from numba's cache) every kernel of this kind, quickly."""
    time_limit_seconds: float = 600.0
    """Wall-clock limit for one run; the runner fails the job past it."""
