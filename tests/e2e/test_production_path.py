"""Calculations end to end on the production path: PostgreSQL, Redis, a real Uvicorn,
a real `crunchql worker`, and a graphql-transport-ws client."""

from __future__ import annotations

import asyncio
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.processes import (
    LOAD_FACTOR,
    MARGIN_SECONDS,
    WORKER_BOOT_SECONDS,
    HttpGraphQL,
    ServiceProcess,
    collect_updates,
    pi_deadline,
    wait_running,
    wait_until,
    ws_session,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

# A job a test interrupts (kills its worker, cuts Redis): 60 chunks, ~4-6 s on 2 idle
# cores and longer under load. The tests act as soon as its first chunk is stored, so
# 59 chunks are left to outlast the test's reaction (milliseconds) on any machine.
INTERRUPTED_SAMPLES = 4_000_000_000
# The stack's timing: a dead worker's run is taken over once its heartbeat is stale
# (CRUNCHQL_WORKER_STALE_SECONDS in service_env) and the next sweep (5 s) re-sends it.
TAKEOVER_SECONDS = 6 + 5


def black_scholes(s: float, k: float, r: float, sigma: float, t: float, call: bool) -> float:
    d1 = (math.log(s / k) + (r + sigma**2 / 2) * t) / (sigma * math.sqrt(t))
    d2 = d1 - sigma * math.sqrt(t)
    n = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    if call:
        return s * n(d1) - k * math.exp(-r * t) * n(d2)
    return k * math.exp(-r * t) * n(-d2) - s * n(-d1)


OPTION_INPUT = {
    "spot": 100, "strike": 100, "rate": 0.05, "volatility": 0.2, "maturity": 1.0,
    "optionType": "CALL", "style": "ASIAN", "paths": 1000,
}  # fmt: skip


async def client(stack: Stack) -> HttpGraphQL:
    graphql = HttpGraphQL(stack.base)
    await graphql.register()
    return graphql


def assert_progress_never_decreases(events: list[dict[str, Any]]) -> None:
    progress = [event["progress"] for event in events]
    assert progress == sorted(progress), progress


async def test_monte_carlo_pi_streams_progress_to_the_result(stack: Stack) -> None:
    graphql = await client(stack)
    # 30 chunks, ~2-3 s on 2 idle cores: some 20-30 progress publish intervals (0.1 s).
    samples = 2_000_000_000
    listening = asyncio.Event()
    async with ws_session(stack.base, graphql.token) as socket_:
        # The worker waits until the subscriber is in place, so the subscriber sees the
        # whole run however fast the machine runs it (a subscriber that arrives late to
        # a short job sees only its end, which proves nothing about live progress).
        with stack.paused_workers():
            submitted = await graphql.submit({"monteCarloPi": {"samples": samples, "seed": 7}})
            updates = asyncio.create_task(
                collect_updates(
                    socket_, submitted["id"], timeout=pi_deadline(samples), started=listening
                )
            )
            await asyncio.wait_for(listening.wait(), MARGIN_SECONDS)
        events, errors = await updates
    assert errors == [], stack.dump_logs()
    assert events[0]["status"] == "QUEUED", events[0]  # subscribed before the run began
    assert events[-1]["status"] == "SUCCEEDED", events[-1]
    assert_progress_never_decreases(events)
    running = [e for e in events if e["status"] == "RUNNING" and 0 < e["progress"] < 1]
    assert len(running) >= 2, f"expected live progress, got {[e['progress'] for e in events]}"
    assert all(e["partialResult"] for e in running)  # the running estimate, for a live chart
    result = events[-1]["result"]
    assert events[-1]["progress"] == 1.0
    assert result["samples"] == samples
    assert abs(result["estimate"] - math.pi) < 5 * result["standardError"]
    # Same input, same seed: the very same number.
    again = await graphql.submit({"monteCarloPi": submitted["input"]})
    async with ws_session(stack.base, graphql.token) as socket_:
        events2, _ = await collect_updates(socket_, again["id"], timeout=pi_deadline(samples))
    assert events2[-1]["result"]["estimate"] == result["estimate"]
    await graphql.close()


@pytest.mark.parametrize(
    ("spot", "strike", "rate", "vol", "maturity"),
    [(100, 100, 0.05, 0.2, 1.0), (42, 40, 0.1, 0.2, 0.5), (100, 130, 0.01, 0.35, 2.0)],
)
async def test_european_options_match_black_scholes_and_parity(
    stack: Stack, spot: float, strike: float, rate: float, vol: float, maturity: float
) -> None:
    graphql = await client(stack)
    prices = {}
    for option_type in ("CALL", "PUT"):
        submitted = await graphql.submit(
            {
                "optionPricing": {
                    "spot": spot,
                    "strike": strike,
                    "rate": rate,
                    "volatility": vol,
                    "maturity": maturity,
                    "optionType": option_type,
                    "style": "EUROPEAN",
                    "paths": 400_000,
                    "seed": 11,
                }
            }
        )
        async with ws_session(stack.base, graphql.token) as socket_:
            events, errors = await collect_updates(socket_, submitted["id"])
        assert errors == []
        result = events[-1]["result"]
        exact = black_scholes(spot, strike, rate, vol, maturity, option_type == "CALL")
        assert result["analyticPrice"] == pytest.approx(exact, rel=1e-9)
        assert abs(result["price"] - exact) < 4 * result["standardError"], (result, exact)
        assert (
            result["confidenceLow"] < exact < result["confidenceHigh"]
            or abs(result["price"] - exact) < 4 * result["standardError"]
        )
        prices[option_type] = result
    parity = spot - strike * math.exp(-rate * maturity)
    difference = prices["CALL"]["price"] - prices["PUT"]["price"]
    combined = math.hypot(prices["CALL"]["standardError"], prices["PUT"]["standardError"])
    assert abs(difference - parity) < 5 * combined
    await graphql.close()


async def test_subscription_to_a_finished_calculation_yields_once(stack: Stack) -> None:
    graphql = await client(stack)
    submitted = await graphql.submit({"monteCarloPi": {"samples": 1000, "seed": 1}})
    await wait_until(
        lambda: _status_is(graphql, submitted["id"], "SUCCEEDED"),
        pi_deadline(1000),
        "tiny job to finish",
    )
    async with ws_session(stack.base, graphql.token) as socket_:
        events, errors = await collect_updates(socket_, submitted["id"])
    assert errors == [] and len(events) == 1 and events[0]["status"] == "SUCCEEDED"
    await graphql.close()


async def _status_is(graphql: HttpGraphQL, calculation_id: str, status: str) -> bool:
    return (await graphql.get(calculation_id))["status"] == status


async def test_another_users_calculation_is_invisible(stack: Stack) -> None:
    alice, mallory = await client(stack), await client(stack)
    submitted = await alice.submit({"monteCarloPi": {"samples": 1000}})
    assert await mallory.get(submitted["id"]) is None
    cancel = await mallory.execute(
        "mutation($id: ID!) { cancelCalculation(id: $id) { id } }", {"id": submitted["id"]}
    )
    assert cancel["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    async with ws_session(stack.base, mallory.token) as socket_:
        events, errors = await collect_updates(socket_, submitted["id"], timeout=20)
    assert events == [] and errors[0]["extensions"]["code"] == "NOT_FOUND"
    listing = await mallory.execute("{ calculations { edges { node { id } } } }")
    assert listing["data"]["calculations"]["edges"] == []
    await alice.close()
    await mallory.close()


async def test_cancel_a_running_calculation(stack: Stack) -> None:
    graphql = await client(stack)
    samples = 10_000_000_000  # the largest job: it would run for ~15 s if not stopped
    submitted = await graphql.submit({"monteCarloPi": {"samples": samples, "seed": 3}})
    stopped_before = await _worker_runs(stack.workers, "cancelled")
    async with ws_session(stack.base, graphql.token) as socket_:
        updates = asyncio.create_task(
            collect_updates(socket_, submitted["id"], timeout=pi_deadline(samples))
        )
        await wait_running(graphql, submitted["id"], stack.api)
        body = await graphql.execute(
            "mutation($id: ID!) { cancelCalculation(id: $id) { status } }", {"id": submitted["id"]}
        )
        assert body["data"]["cancelCalculation"]["status"] == "CANCELLED"
        progress_then = (await graphql.get(submitted["id"]))["progress"]
        events, errors = await updates
    assert events[-1]["status"] == "CANCELLED" and errors == []
    # The worker notices at its next progress write (CRUNCHQL_PROGRESS_WRITE_INTERVAL,
    # 1 s) and stops computing: its own count of cancelled runs says so.
    await wait_until(
        lambda: _worker_runs_above(stack.workers, "cancelled", stopped_before),
        LOAD_FACTOR * 2 + MARGIN_SECONDS,
        "the worker to stop the cancelled run",
    )
    # Nothing it computed after the cancel was stored.
    assert (await graphql.get(submitted["id"]))["progress"] == progress_then
    again = await graphql.execute(
        "mutation($id: ID!) { cancelCalculation(id: $id) { status } }", {"id": submitted["id"]}
    )
    assert again["errors"][0]["extensions"]["code"] == "CONFLICT"
    # The worker is free again: a new job runs to completion.
    quick = await graphql.submit({"monteCarloPi": {"samples": 10_000}})
    await wait_until(
        lambda: _status_is(graphql, quick["id"], "SUCCEEDED"), pi_deadline(10_000), "next job"
    )
    await graphql.close()


async def _worker_runs(workers: list[ServiceProcess], status: str) -> float:
    """Runs of monteCarloPi that ended with ``status``, summed over the workers'
    /metrics (crunchql_calculations_finished_total)."""
    import httpx

    series = f'crunchql_calculations_finished_total{{kind="monteCarloPi",status="{status}"}}'
    total = 0.0
    async with httpx.AsyncClient() as http:
        for worker in workers:
            text = (await http.get(f"http://127.0.0.1:{worker.metrics_port}/metrics")).text
            total += sum(
                float(line.split()[-1]) for line in text.splitlines() if line.startswith(series)
            )
    return total


async def _worker_runs_above(workers: list[ServiceProcess], status: str, floor: float) -> bool:
    return await _worker_runs(workers, status) > floor


async def test_killed_worker_job_is_finished_by_another(stack: Stack) -> None:
    graphql = await client(stack)
    # Park the running worker's job: SIGKILL it mid-run, bring up a new worker.
    submitted = await graphql.submit({"monteCarloPi": {"samples": INTERRUPTED_SAMPLES, "seed": 5}})
    await wait_running(graphql, submitted["id"], stack.api)
    for worker in list(stack.workers):
        worker.kill(signal.SIGKILL)
        worker.stop()
        stack.workers.remove(worker)
    stack.add_worker()
    # The new worker boots (kernels from the cache), the dead one's heartbeat goes stale,
    # a sweep re-sends the run, and the whole job runs again.
    deadline = LOAD_FACTOR * WORKER_BOOT_SECONDS + TAKEOVER_SECONDS
    async with ws_session(stack.base, graphql.token) as socket_:
        events, errors = await collect_updates(
            socket_, submitted["id"], timeout=deadline + pi_deadline(INTERRUPTED_SAMPLES)
        )
    assert errors == [], stack.dump_logs()
    final = events[-1]
    assert final["status"] == "SUCCEEDED", stack.dump_logs()
    assert final["attempts"] >= 2  # it was running when its worker died
    assert_progress_never_decreases(events)
    assert abs(final["result"]["estimate"] - math.pi) < 5 * final["result"]["standardError"]
    await graphql.close()


async def test_bad_input_is_refused_and_nothing_is_queued(stack: Stack) -> None:
    graphql = await client(stack)
    cases = [
        {"monteCarloPi": {"samples": 0}},
        {"monteCarloPi": {"samples": "100000000000"}},
        {
            "optionPricing": {
                "spot": 100,
                "strike": 100,
                "rate": 0.05,
                "volatility": -0.2,
                "maturity": 1,
                "optionType": "CALL",
                "style": "EUROPEAN",
                "paths": 10,
            }
        },
        {
            "optionPricing": {
                "spot": 100,
                "strike": 100,
                "rate": 0.05,
                "volatility": 0.2,
                "maturity": 1,
                "optionType": "CALL",
                "style": "EUROPEAN",
                "paths": 0,
            }
        },
    ]
    for case in cases:
        body = await graphql.execute(
            "mutation($i: CalculationInput!) { submitCalculation(input: $i) { id } }", {"i": case}
        )
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", body
    both = await graphql.execute(
        "mutation { submitCalculation(input: {monteCarloPi: {samples: 5}, "
        "primeCount: {limit: 5}}) { id } }"
    )
    assert both["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    listing = await graphql.execute("{ calculations { edges { node { id } } } }")
    assert listing["data"]["calculations"]["edges"] == []
    await graphql.close()


async def test_redis_connections_dropped_mid_job(stack: Stack) -> None:
    """Every Redis connection (the API's subscriber, the worker's broker and publisher)
    is cut while a job runs: all reconnect and the subscriber still gets the result."""
    from redis.asyncio import Redis

    graphql = await client(stack)
    submitted = await graphql.submit({"monteCarloPi": {"samples": INTERRUPTED_SAMPLES, "seed": 9}})
    redis = Redis.from_url(stack.redis_url)
    async with ws_session(stack.base, graphql.token) as socket_:
        updates = asyncio.create_task(
            collect_updates(socket_, submitted["id"], timeout=pi_deadline(INTERRUPTED_SAMPLES))
        )
        await wait_running(graphql, submitted["id"], stack.api)
        killed = await redis.client_kill_filter(_type="pubsub")
        killed += await redis.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 2
        # The cut hit a running job (the database answers without Redis).
        assert (await graphql.get(submitted["id"]))["status"] == "RUNNING"
        events, errors = await updates
    await redis.aclose()
    assert errors == [], stack.dump_logs()
    assert events[-1]["status"] == "SUCCEEDED", stack.dump_logs()
    assert_progress_never_decreases(events)
    # And the path still works for the next job.
    quick = await graphql.submit({"monteCarloPi": {"samples": 10_000}})
    async with ws_session(stack.base, graphql.token) as socket_:
        events, _ = await collect_updates(socket_, quick["id"], timeout=pi_deadline(10_000))
    assert events[-1]["status"] == "SUCCEEDED"
    await graphql.close()


async def _run_to_result(stack: Stack, calculation_input: dict[str, Any]) -> dict[str, Any]:
    graphql = await client(stack)
    submitted = await graphql.submit(calculation_input)
    async with ws_session(stack.base, graphql.token) as socket_:
        events, errors = await collect_updates(socket_, submitted["id"])
    await graphql.close()
    assert errors == [], stack.dump_logs()
    assert events[-1]["status"] == "SUCCEEDED", events[-1]
    assert_progress_never_decreases(events)
    result: dict[str, Any] = events[-1]["result"]
    return result


async def test_prime_count_through_a_worker(stack: Stack) -> None:
    result = await _run_to_result(stack, {"primeCount": {"limit": "1000000000"}})
    assert result == {"__typename": "PrimeCountResult", "limit": 10**9, "count": 50_847_534}


async def test_mandelbrot_through_a_worker(stack: Stack) -> None:
    import base64
    import io

    from PIL import Image

    result = await _run_to_result(
        stack, {"mandelbrot": {"width": 320, "height": 200, "maxIterations": 500}}
    )
    image = Image.open(io.BytesIO(base64.b64decode(result["png"])))
    assert image.size == (320, 200) and (result["width"], result["height"]) == (320, 200)
    area = result["insideFraction"] * 3.5 * 2.5  # the default window
    assert abs(area - 1.5066) < 0.05  # coarse grid: the pixel count is within a few %


async def test_n_body_through_a_worker(stack: Stack) -> None:
    result = await _run_to_result(
        stack, {"nBody": {"preset": "SOLAR_SYSTEM", "steps": 1000, "dt": 0.01}}
    )
    # The Computer Language Benchmarks Game's published figures.
    assert f"{result['initialEnergy']:.9f}" == "-0.169075164"
    assert f"{result['finalEnergy']:.9f}" == "-0.169087605"
    assert result["bodies"] == 5 and result["steps"] == 1000


async def test_k_means_through_a_worker(stack: Stack) -> None:
    from crunchql.compute import k_means
    from crunchql.compute.catalog import K_MEANS

    raw = {"n": 300_000, "dimensions": 4, "k": 6, "spread": 0.01, "seed": 11}
    result = await _run_to_result(stack, {"kMeans": raw})
    # The worker (its own process and thread count) computes the very same numbers.
    expected = k_means.k_means(K_MEANS.parse(raw)).result()
    assert result == {"__typename": "KMeansResult", **expected}
    assert result["k"] == 6 and len(result["centroids"]) == 6


def _mapped_files(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split()[-1] for line in maps if len(line.split()) >= 6}


def _process_tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(p for child in children for p in _process_tree(int(child)))]


def _kernel_libraries(pid: int) -> set[str]:
    return {path for path in _mapped_files(pid) if "numba" in path or "llvmlite" in path}


async def test_the_api_process_maps_no_numba_or_llvmlite(stack: Stack) -> None:
    """Validating input needs only the kinds' plain-Python parameters: the API process of
    the production path never loads the kernels (and with them numba and LLVM)."""
    graphql = await client(stack)
    await graphql.submit({"kMeans": {"n": 1000, "dimensions": 2, "k": 3}})
    await graphql.submit({"optionPricing": OPTION_INPUT})
    refused = await graphql.execute(
        "mutation { submitCalculation(input: { kMeans: { n: 10000000, dimensions: 64, k: 16 } })"
        " { id } }"
    )
    assert refused["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    await graphql.close()
    assert _kernel_libraries(stack.api.process.pid) == set()
    # The check can see them: a worker process, which runs the kernels, maps them.
    workers = [p for w in stack.workers for p in _process_tree(w.process.pid)]
    assert any(_kernel_libraries(pid) for pid in workers), workers


async def _gauge(stack: Stack, name: str) -> float:
    import httpx

    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://{stack.base}/metrics")).text
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else 0.0


async def test_a_client_that_disconnects_releases_its_subscriptions(stack: Stack) -> None:
    import json

    graphql = await client(stack)
    submitted = await graphql.submit({"monteCarloPi": {"samples": 10_000_000_000, "seed": 1}})
    before = await _gauge(stack, "crunchql_subscriptions_active")
    async with ws_session(stack.base, graphql.token) as socket_:
        for op in range(5):
            await socket_.send(json.dumps({
                "id": str(op), "type": "subscribe",
                "payload": {"query": "subscription($id: ID!) { calculationUpdates(id: $id) "
                            "{ progress } }", "variables": {"id": submitted["id"]}},
            }))  # fmt: skip
        await wait_until(
            lambda: _gauge_is(stack, "crunchql_subscriptions_active", before + 5),
            20,
            "five live subscriptions",
        )
    # The socket is gone without a single `complete`: the server lets everything go.
    await wait_until(
        lambda: _gauge_is(stack, "crunchql_subscriptions_active", before),
        20,
        "the subscriptions to be released",
    )
    await graphql.execute(
        "mutation($id: ID!) { cancelCalculation(id: $id) { id } }", {"id": submitted["id"]}
    )
    await graphql.close()


async def _gauge_is(stack: Stack, name: str, value: float) -> bool:
    return await _gauge(stack, name) == value


async def _worker_rows(stack: Stack) -> dict[str, int]:
    """The heartbeat rows (worker id → pid), stale ones of killed workers included."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(stack.database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT id, pid FROM workers"))
            return {worker_id: int(pid) for worker_id, pid in rows}
    finally:
        await engine.dispose()


def _in_group(pid: int, group: int) -> bool:
    try:
        return os.getpgid(pid) == group
    except ProcessLookupError:
        return False


async def test_a_worker_stopped_as_a_process_group_hands_its_job_back(stack: Stack) -> None:
    """systemd's stop (and Ctrl-C in a terminal) signals every process of the group, so
    each Dramatiq worker process gets SIGTERM twice at once: straight, and passed on by
    its main process. Dramatiq reads a second SIGTERM as "die now"; such a worker used
    to abandon its job and then hang until SIGKILL. It stops as on one SIGTERM: hands
    the job back, says goodbye (its heartbeat row goes) and exits."""
    graphql = await client(stack)
    submitted = await graphql.submit({"monteCarloPi": {"samples": INTERRUPTED_SAMPLES, "seed": 9}})
    await wait_running(graphql, submitted["id"], stack.api)
    [worker] = stack.workers
    rows = await _worker_rows(stack)
    beating = {w for w, pid in rows.items() if _in_group(pid, worker.process.pid)}
    assert beating, worker.log()
    worker.kill(signal.SIGTERM)  # the whole process group
    # Handing back waits for the running chunk at most.
    await asyncio.to_thread(worker.process.wait, LOAD_FACTOR * 5 + MARGIN_SECONDS)
    stack.workers.remove(worker)
    worker.stop()
    assert not beating & set(await _worker_rows(stack)), worker.log()  # a goodbye, not a crash
    stack.add_worker()
    deadline = LOAD_FACTOR * WORKER_BOOT_SECONDS + pi_deadline(INTERRUPTED_SAMPLES)
    async with ws_session(stack.base, graphql.token) as socket_:
        events, errors = await collect_updates(socket_, submitted["id"], timeout=deadline)
    assert errors == [], stack.dump_logs()
    assert events[-1]["status"] == "SUCCEEDED", stack.dump_logs()
    await graphql.close()
