from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import truncate
from tests.e2e.processes import (
    PrivateRedis,
    ServiceProcess,
    calculation_kinds,
    paused,
    service_env,
    start_api,
    start_worker,
    wait_for_workers,
    wait_healthy,
    worker_boot_deadline,
)


@dataclass
class Stack:
    """PostgreSQL + Redis + one Uvicorn API + worker processes, as in production."""

    database_url: str
    redis: PrivateRedis
    log_dir: Path
    api: ServiceProcess
    base: str
    workers: list[ServiceProcess] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def env(self) -> dict[str, str]:
        return service_env(self.database_url, self.redis_url)

    def add_worker(self) -> ServiceProcess:
        worker = start_worker(self.env(), self.log_dir)
        self.workers.append(worker)
        return worker

    def paused_workers(self) -> AbstractContextManager[None]:
        return paused(self.workers)

    def dump_logs(self) -> str:
        return "\n".join(
            f"===== {p.name} =====\n{p.log()[-6000:]}" for p in [self.api, *self.workers]
        )


@pytest.fixture(scope="module")
async def stack(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    await truncate(postgres_url)
    log_dir = tmp_path_factory.mktemp("e2e-logs")
    redis = await PrivateRedis.start(log_dir)
    api: ServiceProcess | None = None
    result: Stack | None = None
    try:
        env = service_env(postgres_url, redis.url)
        api, base = start_api(env, log_dir)
        result = Stack(postgres_url, redis, log_dir, api, base)
        await wait_healthy(base, api)
        worker = result.add_worker()
        # The first worker of a fresh clone compiles every kind's kernels before its
        # first heartbeat: no test's job pays (or times out on) a compile.
        deadline = worker_boot_deadline(await calculation_kinds(base))
        await wait_for_workers(base, 1, worker, timeout=deadline)
        yield result
    finally:
        for process in [*(result.workers if result else []), *([api] if api else [])]:
            process.stop()
        redis.stop()
