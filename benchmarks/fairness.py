"""Fair compute on the production path (PostgreSQL + Redis + Uvicorn + one worker).

    python -m benchmarks.fairness [--long-jobs 20] [--samples 400000000] [--runs 3]

User A submits --long-jobs long monteCarloPi jobs; right after, user B submits a tiny
one. Measured: B's time from submission (createdAt) to start (startedAt) and to its
result (finishedAt), both from the database's own timestamps, with the per-user running
limit at its default (2) and effectively off (FIFO, the behaviour before it). Prints a
table of medians over --runs runs. The worker runs `--threads 4`, as `crunchql worker`
does by default.

Needs PostgreSQL and Redis (TEST_DATABASE_URL / TEST_REDIS_URL as for the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from datetime import datetime
from pathlib import Path

from benchmarks.service import REDIS_URL, drop_database, fresh_database
from tests.conftest import flush_redis
from tests.e2e.processes import (
    HttpGraphQL,
    service_env,
    start_api,
    start_worker,
    wait_healthy,
    wait_ready,
    wait_until,
)

TIMES = "id status createdAt startedAt finishedAt"


async def one_run(base: str, long_jobs: int, samples: int) -> tuple[float, float]:
    alice, bob = HttpGraphQL(base), HttpGraphQL(base)
    await alice.register()
    await bob.register()
    long_ids = [
        (await alice.submit({"monteCarloPi": {"samples": samples, "seed": i}}))["id"]
        for i in range(long_jobs)
    ]
    tiny = (await bob.submit({"monteCarloPi": {"samples": 1000, "seed": 1}}))["id"]

    async def finished() -> dict[str, str] | None:
        row = await bob.get(tiny, TIMES)
        return row if row["status"] == "SUCCEEDED" else None

    row = await wait_until(finished, 600, "B's tiny job")
    created = datetime.fromisoformat(row["createdAt"])
    started = datetime.fromisoformat(row["startedAt"])
    done = datetime.fromisoformat(row["finishedAt"])
    for calculation_id in long_ids:  # clear the way for the next run
        await alice.execute(
            "mutation($id: ID!) { cancelCalculation(id: $id) { id } }", {"id": calculation_id}
        )
    await alice.close()
    await bob.close()
    return (started - created).total_seconds(), (done - created).total_seconds()


async def measure(max_running: int, args: argparse.Namespace) -> tuple[float, float]:
    database = await fresh_database()
    await flush_redis(REDIS_URL)
    log_dir = Path(tempfile.mkdtemp(prefix="crunchql-fairness-"))
    env = service_env(
        database,
        REDIS_URL,
        CRUNCHQL_MAX_RUNNING_PER_USER=str(max_running),
        CRUNCHQL_MAX_ACTIVE_CALCULATIONS=str(args.long_jobs + 1),
    )
    api, base = start_api(env, log_dir)
    worker = start_worker(env, log_dir, threads=4)
    try:
        await wait_healthy(base, api)
        await wait_ready(base, worker)
        starts, finishes = [], []
        for _ in range(args.runs):
            start, finish = await one_run(base, args.long_jobs, args.samples)
            starts.append(start)
            finishes.append(finish)
        return statistics.median(starts), statistics.median(finishes)
    finally:
        worker.stop()
        api.stop()
        await drop_database(database)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--long-jobs", type=int, default=20)
    parser.add_argument("--samples", type=int, default=400_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    fair = await measure(2, args)
    fifo = await measure(10_000, args)
    print(f"B's tiny job behind A's {args.long_jobs} long jobs, medians of {args.runs} runs")
    print(f"{'policy':<34}{'to start (s)':>14}{'to result (s)':>15}")
    print(f"{'per-user running limit 2':<34}{fair[0]:>14.3f}{fair[1]:>15.3f}")
    print(f"{'no per-user limit (FIFO)':<34}{fifo[0]:>14.3f}{fifo[1]:>15.3f}")
    print(f"{'ratio FIFO / fair':<34}{fifo[0] / max(fair[0], 1e-3):>14.0f}x")


if __name__ == "__main__":
    asyncio.run(main())
