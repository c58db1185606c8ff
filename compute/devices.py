"""Which kinds have a GPU kernel, and what a job costs: what the service routes on.

Pure Python on stored (validated) parameters, like :mod:`compute.params`: the API process
decides between the ``calculations`` and ``calculations.gpu`` queues at submit without
loading a kernel or ``numba.cuda``. The cost is in the shard estimate's unit, seconds of
one CPU core, from the same rates (:mod:`compute.config`, "shards"), so one figure
(``CRUNCHQL_GPU_MIN_COST``) compares with the other (``CRUNCHQL_SHARD_SECONDS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crunchql.compute import config

GPU_KINDS = frozenset({"monteCarloPi", "optionPricing", "mandelbrot"})
"""Kinds with a CUDA kernel (:mod:`crunchql.compute.gpu.jobs`). nBody's RANDOM_CLUSTER
kernel exists for benchmarks but is not routed: the runner's nBody job is not built on it."""


def has_gpu_kernel(kind: str) -> bool:
    return kind in GPU_KINDS


def cpu_cost(kind: str, params: Mapping[str, Any]) -> float | None:
    """Estimated seconds of one CPU core for the whole job; None for a kind that is never
    routed to a GPU (or parameters that do not parse: the CPU queue then reports them).

    * monteCarloPi: ``samples`` at ``PI_SAMPLES_PER_CORE_SECOND``, as its shard plan.
    * optionPricing: ``paths x steps`` pair-steps (1 step for EUROPEAN), as its shard plan.
    * mandelbrot: the bound ``width x height x maxIterations`` iterations. The shard plan
      refines it with a coarse render, a kernel call the API does not make; the bound
      overstates cheap windows, which then go to the GPU, where mandelbrot gains most.
    """
    try:
        if kind == "monteCarloPi":
            return int(params["samples"]) / config.PI_SAMPLES_PER_CORE_SECOND
        if kind == "optionPricing":
            steps = int(params["steps"]) if params.get("style") == "ASIAN" else 1
            return int(params["paths"]) * steps / config.OPTION_PAIR_STEPS_PER_CORE_SECOND
        if kind == "mandelbrot":
            pixels = int(params["width"]) * int(params["height"])
            return pixels * int(params["maxIterations"]) / config.MANDEL_ITERATIONS_PER_CORE_SECOND
    except (KeyError, TypeError, ValueError):
        return None
    return None
