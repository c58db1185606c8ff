"""GPU routing on the production path: PostgreSQL, Redis, `crunchql serve`, a CPU
`crunchql worker` and a `crunchql worker --device gpu` on numba's CUDA simulator.

A large-enough monteCarloPi goes to the GPU worker and returns device "gpu" with the CPU
kernel's inside-count; a small one goes to the CPU worker; with the GPU worker gone, a
large one runs on the CPU. The simulator runs every CUDA thread as a Python thread, so
the sizes are tiny and ``CRUNCHQL_GPU_MIN_COST`` is set just between them.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest

from crunchql.compute.monte_carlo_pi import estimate_pi
from tests.conftest import flush_redis, truncate
from tests.e2e.processes import (
    CRUNCHQL,
    LOAD_FACTOR,
    MARGIN_SECONDS,
    HttpGraphQL,
    ServiceProcess,
    readyz,
    service_env,
    start_api,
    start_worker,
    wait_healthy,
    wait_until,
    worker_boot_deadline,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

SMALL, LARGE = 1_000, 4_000
"""monteCarloPi samples: 2e-6 and 8e-6 s of one core (compute.devices.cpu_cost), either
side of the threshold below; 4,000 points are a fraction of a second in the simulator."""
MIN_COST = "0.000005"
FIELDS = (
    "status device error result { ... on MonteCarloPiResult { estimate standardError samples } }"
)


class GpuStack:
    def __init__(self, env: dict[str, str], log_dir: Any, api: ServiceProcess, base: str) -> None:
        self.env, self.log_dir, self.api, self.base = env, log_dir, api, base
        self.workers: dict[str, ServiceProcess] = {}

    def logs(self) -> str:
        processes = [self.api, *self.workers.values()]
        return "\n".join(f"===== {p.name} =====\n{p.log()[-4000:]}" for p in processes)


async def workers_alive(stack: GpuStack, *, alive: int, gpu: int) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        status, body = await readyz(stack.base)
        workers = body.get("workers", {})
        seen = (workers.get("alive"), workers.get("gpu"))
        return workers if status == 200 and seen == (alive, gpu) else None

    deadline = worker_boot_deadline(3)
    found: dict[str, Any] = await wait_until(check, deadline, f"{alive} workers, {gpu} GPU")
    return found


@pytest.fixture(scope="module")
async def gpu_stack(
    postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GpuStack]:
    await truncate(postgres_url)
    await flush_redis(redis_url)
    log_dir = tmp_path_factory.mktemp("e2e-gpu")
    env = service_env(postgres_url, redis_url, CRUNCHQL_GPU_MIN_COST=MIN_COST)
    api, base = start_api(env, log_dir)
    stack = GpuStack(env, log_dir, api, base)
    try:
        await wait_healthy(base, api)
        stack.workers["cpu"] = start_worker(env, log_dir, threads=1)
        gpu_env = {**env, "NUMBA_ENABLE_CUDASIM": "1"}
        stack.workers["gpu"] = start_worker(gpu_env, log_dir, threads=1, device="gpu")
        await workers_alive(stack, alive=2, gpu=1)
        yield stack
    finally:
        for process in [*stack.workers.values(), api]:
            process.stop()
        await flush_redis(redis_url)


async def run(graphql: HttpGraphQL, samples: int, seed: int) -> dict[str, Any]:
    submitted = await graphql.submit({"monteCarloPi": {"samples": samples, "seed": seed}})

    async def finished() -> dict[str, Any] | None:
        body = await graphql.execute(
            f"query($id: ID!) {{ calculation(id: $id) {{ {FIELDS} }} }}", {"id": submitted["id"]}
        )
        row: dict[str, Any] = body["data"]["calculation"]
        return row if row["status"] not in ("QUEUED", "RUNNING") else None

    # A GPU worker gone with the message in its queue: the sweep (every 5 s) moves it
    # once the worker's heartbeat is stale (6 s here).
    result: dict[str, Any] = await wait_until(
        finished, LOAD_FACTOR * 15 + MARGIN_SECONDS, f"monteCarloPi of {samples}"
    )
    return result


def pi_fields(samples: int, seed: int) -> dict[str, Any]:
    expected = estimate_pi(samples, seed)  # the CPU kernel
    return {k: expected[k] for k in ("estimate", "standardError", "samples")}


async def test_large_jobs_go_to_the_gpu_worker_small_ones_and_the_rest_to_the_cpu(
    gpu_stack: GpuStack,
) -> None:
    stack = gpu_stack
    graphql = HttpGraphQL(stack.base)
    await graphql.register()
    try:
        large = await run(graphql, LARGE, 31)
        assert (large["status"], large["device"]) == ("SUCCEEDED", "gpu"), stack.logs()
        # The same inside-count as the CPU kernel, hence the same floats.
        assert large["result"] == pi_fields(LARGE, 31)
        small = await run(graphql, SMALL, 31)
        assert (small["status"], small["device"]) == ("SUCCEEDED", "cpu"), stack.logs()
        assert small["result"] == pi_fields(SMALL, 31)
        # The GPU worker stops: a large job now runs on the CPU.
        stack.workers.pop("gpu").stop()
        await workers_alive(stack, alive=1, gpu=0)
        after = await run(graphql, LARGE, 32)
        assert (after["status"], after["device"]) == ("SUCCEEDED", "cpu"), stack.logs()
        assert after["result"] == pi_fields(LARGE, 32)
    finally:
        await graphql.close()


def test_a_gpu_worker_without_a_cuda_device_refuses_to_start(
    postgres_url: str, redis_url: str
) -> None:
    """No silent fallback to the CPU: it exits at once, saying why (GPUs hidden, no
    simulator)."""
    env = service_env(postgres_url, redis_url, CUDA_VISIBLE_DEVICES="")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    done = subprocess.run(
        [*CRUNCHQL, "worker", "--device", "gpu"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done
    assert "no CUDA device" in done.stderr and "NUMBA_ENABLE_CUDASIM" in done.stderr, done.stderr
