"""The contract between a calculation kind and whoever runs it.

A kind turns a raw input mapping (the GraphQL input object, camelCase keys, enums
as their names) into validated parameters, and those parameters into a
:class:`Job`: a computation split into chunks of well under a second each.
The runner (a Dramatiq actor, a notebook, a benchmark) drives it::

    params = kind.validate(raw)          # raises ParameterError before any kernel runs
    job = kind.start(params)             # imports the kernel module on first use
    while not job.done:
        job.step()                       # one chunk; releases the GIL inside the kernel
        report(job.progress, job.partial_result())
    result = job.result()

Between two ``step`` calls the runner may stop (cancel, time limit) and simply
drop the job. Results depend only on ``params`` (the seed included), never on the
number of threads, processes or how often ``step`` was called.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar, cast

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


class Params(Protocol):
    """A kind's validated parameters: a frozen dataclass in ``compute/params/``.

    Plain Python only (no NumPy, no numba), so that the API process can validate input
    without loading a kernel.
    """

    @classmethod
    def from_input(cls, raw: Mapping[str, Any]) -> Self:
        """Check a raw input (the GraphQL input object as JSON, or stored parameters) and
        fill in defaults; raise :class:`ParameterError` naming the first bad field."""
        ...

    def to_json(self) -> JSONDict:
        """The parameters as stored in the calculation's ``input`` (camelCase keys).
        ``from_input(p.to_json()) == p``."""
        ...


P = TypeVar("P", bound=Params)
P_contra = TypeVar("P_contra", bound=Params, contravariant=True)


class Kernel(Protocol[P_contra]):
    """What a kernel module (``compute/<kind>.py``) exposes to runners."""

    def start(self, params: P_contra) -> Job:
        """A job for validated parameters."""
        ...

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) every kernel of the kind, quickly."""
        ...


class ShardedKernel(Kernel[P_contra], Protocol[P_contra]):
    """A kernel module whose jobs can be split into shards (see :mod:`compute.sharding`)."""

    def plan_shards(self, params: P_contra, shard_seconds: float) -> int:
        """How many shards for ``shard_seconds`` of one core each (1: not split)."""
        ...

    def start_shard(self, params: P_contra, shard: int, shards: int) -> Job:
        """Shard ``shard`` of ``shards``; its ``result()`` is a JSON partial."""
        ...

    def combine(self, params: P_contra, partials: list[JSONDict]) -> JSONDict:
        """The result from every partial, in shard order: bitwise the unsplit result."""
        ...


@dataclass(frozen=True)
class Kind(Generic[P]):
    """One entry of the catalog (:mod:`compute.catalog`).

    Importing a ``Kind`` imports its parameters class but not its kernel module: the
    kernels (NumPy, numba, LLVM) load on the first :meth:`start` or :meth:`warm_up`, so a
    process that only validates input never maps them.
    """

    name: str
    """The GraphQL input field name, e.g. ``"monteCarloPi"``."""
    description: str
    params: type[P]
    """The frozen parameters dataclass; its ``from_input`` validates."""
    kernel: str
    """Module path of the kernel module, e.g. ``"crunchql.compute.monte_carlo_pi"``, which
    defines ``start(params) -> Job`` and ``warm_up()``."""
    time_limit_seconds: float = 600.0
    """Wall-clock limit for one run; the runner fails the job past it."""

    def parse(self, raw: Mapping[str, Any]) -> P:
        """``raw`` checked and completed as this kind's parameters; raises ParameterError."""
        return self.params.from_input(raw)

    def validate(self, raw: Mapping[str, Any]) -> JSONDict:
        """Check bounds, fill in defaults (drawing a seed when none was given) and return
        the parameters to store as the calculation's ``input``; raise ParameterError."""
        return self.parse(raw).to_json()

    def load_kernel(self) -> Kernel[P]:
        """The kernel module, imported now if it was not yet."""
        return cast(Kernel[P], importlib.import_module(self.kernel))

    def start(self, params: Mapping[str, Any]) -> Job:
        """A job for stored (validated) parameters."""
        return self.load_kernel().start(self.parse(params))

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) every kernel of this kind."""
        self.load_kernel().warm_up()

    def sharded_kernel(self) -> ShardedKernel[P] | None:
        """The kernel module when it can split a job into shards, else None."""
        module = self.load_kernel()
        if all(hasattr(module, name) for name in ("plan_shards", "start_shard", "combine")):
            return cast(ShardedKernel[P], module)
        return None

    def plan_shards_computes(self) -> bool:
        """Whether :meth:`plan_shards` runs a kernel (an estimate): then it belongs in the
        kernel thread. The others are arithmetic on the parameters, done in place."""
        return bool(getattr(self.load_kernel(), "PLAN_SHARDS_COMPUTES", False))

    def plan_shards(self, params: Mapping[str, Any], shard_seconds: float) -> int:
        """Shards for stored parameters (1 for a kind that is never split)."""
        kernel = self.sharded_kernel()
        return 1 if kernel is None else kernel.plan_shards(self.parse(params), shard_seconds)

    def start_shard(self, params: Mapping[str, Any], shard: int, shards: int) -> Job:
        kernel = self.sharded_kernel()
        if kernel is None:
            raise ValueError(f"{self.name} is not split into shards")
        return kernel.start_shard(self.parse(params), shard, shards)

    def combine(self, params: Mapping[str, Any], partials: list[JSONDict]) -> JSONDict:
        kernel = self.sharded_kernel()
        if kernel is None:
            raise ValueError(f"{self.name} is not split into shards")
        return kernel.combine(self.parse(params), partials)
