"""Splitting one calculation into shards of whole random-stream blocks.

A kind that can be split exposes, in its kernel module, besides ``start`` and ``warm_up``
(see :class:`crunchql.compute.base.ShardedKernel`)::

    shards = plan_shards(params, shard_seconds)   # 1: not worth splitting
    job = start_shard(params, shard, shards)      # a Job whose result() is a partial
    result = combine(params, [partial_0, ..., partial_{shards-1}])

The partials are JSON (stored in the database, one row per shard); ``combine`` takes them
in shard order and returns exactly what the unsplit job's ``result()`` returns, bit for
bit: a shard is a contiguous range of the same blocks the unsplit job runs, and the
combination adds integers, or keeps each block's float sums and reduces them exactly as
the unsplit job does.

``plan_shards`` runs on every claim of a splittable kind, on the worker's event loop: it
must be arithmetic on the parameters. A module whose plan runs a kernel (mandelbrot's
coarse estimate) sets ``PLAN_SHARDS_COMPUTES = True``, and runners then call it in the
kernel thread.
"""

from __future__ import annotations

import base64
import math

import numpy as np

from crunchql.compute import config


def shard_count(cost_core_seconds: float, shard_seconds: float, blocks: int) -> int:
    """``ceil(cost / shard_seconds)`` shards, at most one per block and ``MAX_SHARDS``.

    Parameters
    ----------
    cost_core_seconds : float
        Estimated cost of the whole job on one core, seconds.
    shard_seconds : float
        Target cost of one shard; <= 0 disables splitting.
    blocks : int
        Blocks (random streams) of the job, >= 1.
    """
    if shard_seconds <= 0 or cost_core_seconds <= shard_seconds:
        return 1
    wanted = math.ceil(cost_core_seconds / shard_seconds)
    return max(1, min(wanted, blocks, config.MAX_SHARDS))


def block_range(blocks: int, shard: int, shards: int) -> tuple[int, int]:
    """Blocks ``[first, stop)`` of shard ``shard`` of ``shards``: contiguous, sizes differ
    by at most one, together exactly ``0 .. blocks - 1`` in order."""
    if not 0 <= shard < shards <= blocks:
        raise ValueError(f"shard {shard} of {shards} over {blocks} blocks")
    return blocks * shard // shards, blocks * (shard + 1) // shards


def check_cover(partials: list[dict[str, object]], blocks: int) -> None:
    """Raise ``ValueError`` unless the partials' block ranges tile ``0 .. blocks`` in order."""
    expected = 0
    for partial in partials:
        if partial["firstBlock"] != expected:
            raise ValueError(f"shard partials do not tile the blocks at {expected}")
        stop = partial["stopBlock"]
        if not isinstance(stop, int):
            raise ValueError("a shard partial without its stopBlock")
        expected = stop
    if expected != blocks:
        raise ValueError(f"shard partials cover {expected} of {blocks} blocks")


def encode_rows(rows: np.ndarray) -> str:
    """float64 rows as base64 of their little-endian bytes (exact, unlike decimal JSON)."""
    return base64.b64encode(np.ascontiguousarray(rows, dtype="<f8").tobytes()).decode("ascii")


def decode_rows(text: str, columns: int) -> np.ndarray:
    """The inverse of :func:`encode_rows`: shape ``(-1, columns)``, float64."""
    data = np.frombuffer(base64.b64decode(text, validate=True), dtype="<f8")
    return data.reshape(-1, columns).astype(np.float64)
