"""The runner's jobs on a GPU: the CPU jobs of each kind with their kernel call swapped.

:func:`start` and :func:`start_shard` take the same arguments as ``Kind.start`` and
``Kind.start_shard`` and return the CPU job classes of :mod:`crunchql.compute` (chunking,
progress, partial results, shard partials, results) with only the chunk's kernel call
replaced by the CUDA kernel of :mod:`crunchql.compute.gpu` over the same stream blocks or
rows. Results therefore have the CPU runs' shape, a GPU shard's partial combines with CPU
shards' partials, and

* monteCarloPi inside-counts and mandelbrot escape counts (so the PNG) are bitwise the
  CPU's;
* optionPricing's per-block sums are bitwise the CPU's in the simulator, and within
  :mod:`.tolerance` of them on a GPU.

Importing this module imports ``numba.cuda`` (set ``NUMBA_ENABLE_CUDASIM`` first for the
simulator); only a ``crunchql worker --device gpu`` process does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crunchql.compute import config
from crunchql.compute import mandelbrot as cpu_mandelbrot
from crunchql.compute import monte_carlo_pi as cpu_pi
from crunchql.compute import option_pricing as cpu_option
from crunchql.compute.base import Job, JSONDict
from crunchql.compute.catalog import KINDS
from crunchql.compute.devices import GPU_KINDS
from crunchql.compute.gpu import mandelbrot as gpu_mandelbrot
from crunchql.compute.gpu import monte_carlo_pi as gpu_pi
from crunchql.compute.gpu import option_pricing as gpu_option
from crunchql.compute.gpu.compat import SIMULATOR
from crunchql.compute.params.mandelbrot import MandelbrotParams
from crunchql.compute.params.monte_carlo_pi import MonteCarloPiParams
from crunchql.compute.params.option_pricing import OptionPricingParams
from crunchql.compute.sharding import block_range

CHUNK_FACTOR = 1 if SIMULATOR else 64
"""A GPU chunk is this many CPU chunks: the kernels run ~100x faster on a GPU (measured
on an H200, docs/benchmarks.md), so a chunk stays well under a second there while the
runner's per-chunk work (progress, cancel check) stays small beside it. 1 in the
simulator, which is slower than the CPU."""


class GpuPiJob(cpu_pi.PiJob):
    """monteCarloPi, ``CHUNK_FACTOR x PI_CHUNK_BLOCKS`` stream blocks per chunk on the GPU."""

    def step(self) -> None:
        if self.done:
            return
        n_blocks = min(config.PI_CHUNK_BLOCKS * CHUNK_FACTOR,
                       self.total_blocks - self.next_block)  # fmt: skip
        counts = gpu_pi.count_blocks(self.seed, self.next_block, n_blocks, self.samples)
        self.inside += int(counts.sum())  # integers: the CPU kernel's count exactly
        self.next_block += n_blocks


class GpuPiShardJob(GpuPiJob, cpu_pi.PiShardJob):
    """A monteCarloPi shard on the GPU; the same partial as a CPU shard."""


def _option_step(job: cpu_option.OptionJob) -> None:
    if job.done:
        return
    s = job.setup
    stop = min(job.next_block + job.chunk_blocks, job.stop_block)
    rows = gpu_option.block_sums(
        s.seed, job.next_block, stop - job.next_block, s.block_pairs, s.paths, s.steps,
        s.asian, s.phi, s.strike, s.x0, s.a, s.b, s.c_y, s.e_x,
    )  # fmt: skip
    job.sums[job.next_block - job.first_block : stop - job.first_block] = rows
    job.next_block = stop


class GpuOptionJob(cpu_option.OptionJob):
    """optionPricing, ``CHUNK_FACTOR`` times the CPU chunk's blocks per chunk on the GPU."""

    def __init__(
        self, params: Mapping[str, Any], first_block: int = 0, stop_block: int | None = None
    ) -> None:
        super().__init__(params, first_block, stop_block)
        self.chunk_blocks *= CHUNK_FACTOR

    def step(self) -> None:
        _option_step(self)


class GpuOptionShardJob(GpuOptionJob, cpu_option.OptionShardJob):
    """An optionPricing shard on the GPU; the same partial (per-block sums) as a CPU shard."""


class GpuMandelbrotJob(cpu_mandelbrot.MandelbrotJob):
    """mandelbrot, ``CHUNK_FACTOR`` times the CPU band of rows per chunk on the GPU."""

    def __init__(
        self, params: dict[str, Any], first_row: int = 0, stop_row: int | None = None
    ) -> None:
        super().__init__(params, first_row, stop_row)
        self.band *= CHUNK_FACTOR

    def _rows(self, row_lo: int, row_hi: int) -> None:
        gpu_mandelbrot.escape_rows(self.counts, row_lo, row_hi, self.max_iter, *self.geometry)


class GpuMandelbrotShardJob(GpuMandelbrotJob, cpu_mandelbrot.MandelbrotShardJob):
    """A mandelbrot shard on the GPU; the same partial as a CPU shard."""


def start(kind: str, params: Mapping[str, Any]) -> Job:
    """The GPU job of ``kind`` for stored (validated) parameters; ``ValueError`` for a
    kind without a GPU kernel."""
    if kind not in GPU_KINDS:
        raise ValueError(f"{kind} has no GPU kernel")
    parsed = KINDS[kind].parse(params)
    if isinstance(parsed, MonteCarloPiParams):
        return GpuPiJob(parsed.samples, parsed.seed)
    if isinstance(parsed, OptionPricingParams):
        return GpuOptionJob(parsed.to_json())
    assert isinstance(parsed, MandelbrotParams)
    return GpuMandelbrotJob(parsed.to_json())


def start_shard(kind: str, params: Mapping[str, Any], shard: int, shards: int) -> Job:
    """Shard ``shard`` of ``shards`` of a ``kind`` job on the GPU: the blocks (rows) the CPU
    shard would run, and the same partial."""
    if kind not in GPU_KINDS:
        raise ValueError(f"{kind} has no GPU kernel")
    parsed = KINDS[kind].parse(params)
    if isinstance(parsed, MonteCarloPiParams):
        first, stop = block_range(-(-parsed.samples // gpu_pi.BLOCK), shard, shards)
        return GpuPiShardJob(parsed.samples, parsed.seed, first, stop)
    if isinstance(parsed, OptionPricingParams):
        raw = parsed.to_json()
        first, stop = block_range(cpu_option.make_setup(raw).blocks, shard, shards)
        return GpuOptionShardJob(raw, first, stop)
    assert isinstance(parsed, MandelbrotParams)
    first, stop = block_range(parsed.height, shard, shards)
    return GpuMandelbrotShardJob(parsed.to_json(), first, stop)


def _run(job: Job) -> JSONDict:
    while not job.done:
        job.step()
    return job.result()


def run(kind: str, params: Mapping[str, Any]) -> JSONDict:
    """The whole GPU job at once (tests, benchmarks): what a GPU worker stores."""
    return _run(start(kind, params))


def run_shard(kind: str, params: Mapping[str, Any], shard: int, shards: int) -> JSONDict:
    """One GPU shard at once: its partial, which combines with CPU shards' partials."""
    return _run(start_shard(kind, params, shard, shards))


def warm_up() -> None:
    """Compile the three kinds' CUDA kernels (and the CPU helpers their jobs share)."""
    gpu_pi.warm_up()
    gpu_option.warm_up()
    gpu_mandelbrot.warm_up()
