"""Scale-out of one sharded calculation over worker processes (issue 14, item 2).

    python -m benchmarks.scale_out [--samples 10000000000] [--workers 1 2 4] [--reps 1]

On the production path (PostgreSQL + Redis + Uvicorn + `crunchql worker` processes, one
kernel thread and one numba thread each, so that a worker process is one core), for each
worker count: the wall time from `submitCalculation` to SUCCEEDED of one monteCarloPi of
``--samples`` samples, split at the default shard size (``CRUNCHQL_SHARD_SECONDS`` = 2 s
of one core), the speed-up and efficiency against one worker, and a check that every
result is bit for bit the unsplit result (computed in this process, all threads).

Then the per-shard overhead (message, claim, progress, store, combine), measured as the
wall time of a calculation of many one-block shards on one worker minus their kernel
time, and a model built from it and the measured single-core rate: how the time of a
10^10-sample monteCarloPi would fall on 8, 32 and 128 worker cores.

Needs PostgreSQL and Redis (TEST_DATABASE_URL / TEST_REDIS_URL as for the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.service import drop_database, fresh_database
from crunchql.compute import config
from crunchql.compute.monte_carlo_pi import count_inside_serial, estimate_pi
from tests.e2e.processes import (
    HttpGraphQL,
    ServiceProcess,
    service_env,
    start_api,
    start_worker,
    wait_healthy,
    wait_ready,
)

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
FIELDS = (
    "status error shards shardsDone device "
    "result { ... on MonteCarloPiResult { estimate standardError samples } }"
)
MODEL_SAMPLES = 10**10
MODEL_CORES = (8, 32, 128)
OVERHEAD_SHARDS = 64


async def run_one(graphql: HttpGraphQL, samples: int, seed: int) -> tuple[float, dict[str, Any]]:
    """Wall seconds from submit to a terminal status, and the calculation then."""
    started = time.perf_counter()
    submitted = await graphql.submit({"monteCarloPi": {"samples": samples, "seed": seed}})
    while True:
        calculation = await graphql.get(submitted["id"], FIELDS)
        if calculation["status"] not in ("QUEUED", "RUNNING"):
            return time.perf_counter() - started, calculation
        await asyncio.sleep(0.05)


async def with_stack(
    database_url: str, log_dir: Path, workers: int, shard_seconds: float, body: Any
) -> Any:
    env = service_env(
        database_url,
        REDIS_URL,
        CRUNCHQL_LOG_LEVEL="WARNING",
        CRUNCHQL_METRICS="false",
        CRUNCHQL_SHARD_SECONDS=str(shard_seconds),
        NUMBA_NUM_THREADS="1",  # one worker process = one core
    )
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL)
    await redis.flushdb()
    await redis.aclose()
    api, base = start_api(env, log_dir)
    processes: list[ServiceProcess] = [api]
    try:
        await wait_healthy(base, api)
        for _ in range(workers):
            processes.append(start_worker(env, log_dir, threads=1))
        for worker in processes[1:]:
            await wait_ready(base, worker)
        graphql = HttpGraphQL(base)
        await graphql.register()
        try:
            return await body(graphql)
        finally:
            await graphql.close()
    finally:
        for process in processes:
            process.stop()


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=MODEL_SAMPLES)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()

    load = os.getloadavg()
    print(f"crunchql scale-out benchmark — {time.strftime('%Y-%m-%d %H:%M')} — "
          f"{os.cpu_count()} cores, load average before {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}")  # fmt: skip
    # The single-core rate (numba serial kernel) for the model.
    probe = 2 * 10**8
    count_inside_serial(config.PI_BLOCK_SAMPLES, 1)
    started = time.perf_counter()
    count_inside_serial(probe, args.seed)
    ns_per_sample = (time.perf_counter() - started) / probe * 1e9
    started = time.perf_counter()
    expected = await asyncio.to_thread(estimate_pi, args.samples, args.seed)
    unsplit_seconds = time.perf_counter() - started
    print(f"unsplit, in process, all threads: {unsplit_seconds:.1f} s; "
          f"one core: {ns_per_sample:.2f} ns per sample")  # fmt: skip

    database_url = await fresh_database()
    log_dir = Path(tempfile.mkdtemp(prefix="crunchql-scale-out-"))
    rows: list[tuple[str, ...]] = []
    try:
        times: dict[int, float] = {}
        for workers in args.workers:

            async def measure(graphql: HttpGraphQL) -> list[tuple[float, dict[str, Any]]]:
                return [await run_one(graphql, args.samples, args.seed) for _ in range(args.reps)]

            runs = await with_stack(database_url, log_dir, workers, 2.0, measure)
            for _, calculation in runs:
                assert calculation["status"] == "SUCCEEDED", calculation
                assert calculation["result"] == {**expected, "samples": args.samples}, (
                    calculation["result"], expected)  # fmt: skip
            times[workers] = statistics.median(seconds for seconds, _ in runs)
            shards = runs[0][1]["shards"]
            base = times[args.workers[0]] * args.workers[0]
            speedup = times[args.workers[0]] / times[workers]
            rows.append((
                str(workers), str(shards), f"{times[workers]:.1f} s", f"{speedup:.2f}x",
                f"{base / times[workers] / workers:.0%}", "bitwise equal to unsplit",
            ))  # fmt: skip
        print()
        print(f"monteCarloPi, {args.samples:.0e} samples, seed {args.seed}, shard size 2 s, "
              f"median of {args.reps}:")  # fmt: skip
        print(table(rows, ("worker processes", "shards", "wall time", "speed-up",
                           "efficiency", "result")))  # fmt: skip

        # Per-shard overhead: OVERHEAD_SHARDS one-block shards on one worker.
        async def overhead(graphql: HttpGraphQL) -> float:
            samples = OVERHEAD_SHARDS * config.PI_BLOCK_SAMPLES
            seconds, calculation = await run_one(graphql, samples, args.seed)
            assert calculation["shards"] == OVERHEAD_SHARDS, calculation
            return seconds

        tiny_wall = statistics.median([
            await with_stack(database_url, log_dir, 1, 1e-9, overhead) for _ in range(1)
        ])  # fmt: skip
        kernel = OVERHEAD_SHARDS * config.PI_BLOCK_SAMPLES * ns_per_sample * 1e-9
        per_shard = max(tiny_wall - kernel, 0.0) / OVERHEAD_SHARDS
        print()
        print(f"per-shard overhead: {per_shard * 1e3:.1f} ms ({OVERHEAD_SHARDS} one-block "
              f"shards on one worker: {tiny_wall:.2f} s wall, "
              f"{kernel:.2f} s of it kernel)")  # fmt: skip

        core_seconds = MODEL_SAMPLES * ns_per_sample * 1e-9
        model_rows = []
        for cores in MODEL_CORES:
            for label, shards in (
                # What the planner picks at the default size (its own rate constant).
                ("2 s (default)", math.ceil(MODEL_SAMPLES / config.PI_SAMPLES_PER_CORE_SECOND / 2)),
                (f"{core_seconds / cores:.2f} s (= work / cores)", cores),
            ):
                waves = math.ceil(shards / cores)
                seconds = waves * (core_seconds / shards + per_shard) + per_shard
                model_rows.append((
                    str(cores), label, str(shards), f"{seconds:.2f} s",
                    f"{core_seconds / cores / seconds:.0%}",
                ))  # fmt: skip
        print()
        print(f"model: 10^10-sample monteCarloPi = {core_seconds:.1f} core-seconds; time = "
              "waves x (shard work + overhead) + one overhead for the split:")  # fmt: skip
        print(table(model_rows, ("worker cores", "shard size", "shards", "time", "efficiency")))
    finally:
        await drop_database(database_url)
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
