"""One calculation across two real worker processes: split into shards that both run,
one worker SIGKILLed in the middle of a shard, and the result still bit for bit the
unsplit run's (PostgreSQL, Redis, Uvicorn, two `crunchql worker` processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from crunchql.compute.catalog import MONTE_CARLO_PI
from crunchql.compute.monte_carlo_pi import estimate_pi
from crunchql.core.settings import normalise_database_url
from tests.conftest import flush_redis, truncate
from tests.e2e.conftest import Stack
from tests.e2e.processes import (
    HttpGraphQL,
    service_env,
    start_api,
    start_worker,
    wait_healthy,
    wait_ready,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

# Small enough for CI: 1.4 * 10**9 samples at 0.4 s of one core per shard is 7 shards of
# 2 * 10**8 samples, three chunks each (~0.3 s to a few seconds on a loaded host). The
# manual check of issue 14 runs it at full size with the default shard size:
#   SHARDS_E2E_SAMPLES=10000000000 SHARDS_E2E_SHARD_SECONDS=2 pytest tests/e2e/test_shards.py
SAMPLES = int(os.environ.get("SHARDS_E2E_SAMPLES", "1400000000"))
SHARD_SECONDS = os.environ.get("SHARDS_E2E_SHARD_SECONDS", "0.4")
SEED = 2718
SHARDS = MONTE_CARLO_PI.plan_shards({"samples": SAMPLES, "seed": SEED}, float(SHARD_SECONDS))


@pytest.fixture(scope="module")
async def two_workers(
    postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    await truncate(postgres_url)
    await flush_redis(redis_url)
    log_dir = tmp_path_factory.mktemp("e2e-shards")
    env = service_env(
        postgres_url,
        redis_url,
        CRUNCHQL_SHARD_SECONDS=SHARD_SECONDS,
        CRUNCHQL_PROGRESS_WRITE_INTERVAL="0.05",  # a shard's progress shows after one chunk
    )
    api, base = start_api(env, log_dir)
    stack = Stack(postgres_url, redis_url, log_dir, api, base)
    try:
        await wait_healthy(base, api)
        for _ in range(2):
            stack.workers.append(start_worker(env, log_dir, threads=1))
        for worker in stack.workers:
            await wait_ready(base, worker)
        yield stack
    finally:
        for process in [*stack.workers, api]:
            process.stop()
        await flush_redis(redis_url)


async def shard_rows(engine: AsyncEngine, calculation_id: str) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT shard, status, worker_id, attempts, progress FROM calculation_shards "
                "WHERE calculation_id = :id ORDER BY shard"
            ),
            {"id": uuid.UUID(calculation_id)},
        )
        return [dict(row._mapping) for row in rows]


def owner_of(stack: Stack, worker_id: str) -> Any:
    """The worker process (group) whose forked process holds ``worker_id``."""
    pid = int(worker_id.split(":")[1])
    group = os.getpgid(pid)
    return next(worker for worker in stack.workers if worker.process.pid == group)


async def test_a_sharded_run_survives_a_killed_worker_with_the_unsplit_result(
    two_workers: Stack,
) -> None:
    stack = two_workers
    engine = create_async_engine(normalise_database_url(stack.database_url))
    graphql = HttpGraphQL(stack.base)
    await graphql.register()
    unsplit = asyncio.create_task(asyncio.to_thread(estimate_pi, SAMPLES, SEED))
    submitted = await graphql.submit({"monteCarloPi": {"samples": SAMPLES, "seed": SEED}})
    calculation_id = submitted["id"]

    async def both_workers_done_and_one_early_in_a_shard() -> dict[str, Any] | None:
        rows = await shard_rows(engine, calculation_id)
        done = {row["worker_id"] for row in rows if row["status"] == "DONE"}
        # Early in its shard (one chunk of three done), so that it is killed mid-shard.
        running = [row for row in rows if row["status"] == "RUNNING" and row["progress"] < 0.5]
        return running[0] if len(done) >= 2 and running else None

    victim_shard = await wait_until(
        both_workers_done_and_one_early_in_a_shard, 180, "shards on both workers", stack.api
    )
    victim = owner_of(stack, victim_shard["worker_id"])
    victim.kill(signal.SIGKILL)

    fields = "status result { ... on MonteCarloPiResult { estimate standardError samples } } "
    fields += "shards shardsDone device attempts error"

    async def finished() -> dict[str, Any] | None:
        body = await graphql.execute(
            f"query($id: ID!) {{ calculation(id: $id) {{ {fields} }} }}", {"id": calculation_id}
        )
        calculation: dict[str, Any] = body["data"]["calculation"]
        return calculation if calculation["status"] not in ("QUEUED", "RUNNING") else None

    final = await wait_until(finished, 240 + SAMPLES / 10**8, "the sharded calculation")
    assert final["status"] == "SUCCEEDED", (final, stack.dump_logs())
    assert SHARDS > 2 and final["shards"] == final["shardsDone"] == SHARDS
    assert final["device"] == "cpu"
    assert final["attempts"] == 2  # the killed shard was started twice
    expected = await unsplit
    assert final["result"] == {
        "estimate": expected["estimate"],
        "standardError": expected["standardError"],
        "samples": SAMPLES,
    }
    rows = await shard_rows(engine, calculation_id)
    await engine.dispose()
    assert all(row["status"] == "DONE" for row in rows)
    # The shard the killed worker held was run again, by the other worker.
    rerun = rows[victim_shard["shard"]]
    assert rerun["attempts"] >= 2 and rerun["worker_id"] != victim_shard["worker_id"]
    await graphql.close()
