"""crunchql against the stack it replaces: FastAPI + Celery + Redis + PostgreSQL.

    python -m benchmarks.versus [--rounds 3] [--jobs 200] [--throughput-seconds 8]
                                [--concurrency 32] [--wrk-seconds 3] [--celery-pool prefork]
                                [--no-pin] [--crunchql-caps off|lifted]

Needs the ``bench`` extra (``pip install -e ".[bench]"``), PostgreSQL (TEST_DATABASE_URL,
as for the tests: each stack gets a fresh database of its own, dropped at the end) and
``redis-server`` (each stack gets a private server on a free port) and ``wrk``.

Both stacks run on the production path side by side, started once and kept up:

- crunchql: ``crunchql serve`` (one Uvicorn process) and ``crunchql worker --processes 1
  --threads 8``, as benchmarks/service.py starts them;
- classic (benchmarks/classic): one Uvicorn process serving the FastAPI app and one Celery
  worker, ``--pool prefork --concurrency 1`` by default: prefork is Celery's default
  pool and the one its documentation recommends for CPU-bound tasks; one child process
  is the worker process count crunchql's worker gets (``--celery-pool solo`` runs the
  task in the worker's main process instead).

The client logic is one loop for both (submit over HTTP with httpx, then watch over a
WebSocket, time until the terminal status arrives); only the wire format differs:
crunchql's client submits the GraphQL mutation and subscribes on its open
graphql-transport-ws connection, the classic client POSTs /calculations and opens
/ws/{id}. Rows, each measured once per stack per round, the stacks taking turns to go
first; the table shows medians of the rounds:

- submit → terminal event at the client, tiny job (monteCarloPi, 1,000 samples), one
  job at a time: p50 and p99 over --jobs jobs after 20 warm-up jobs;
- tiny calculations per second with --concurrency clients, each with its own WebSocket
  connection, submitting and awaiting the terminal event in a loop;
- submit → stored result per second: wrk floods the submit for --wrk-seconds, then the
  rate is jobs stored per second from the first one created to the last one finished;
- CPU per job over the WebSocket clients' run and over the wrk flood (until the last
  job is stored), by component: the API's process, the worker's processes, the stack's
  Redis server and the PostgreSQL backends connected to its database (user + system time
  from /proc, divided by the jobs completed).

Pinning (machines with 2 cores or more, unless --no-pin): the servers (API, worker,
private Redis) run on every core but the last, the load generator (this process and wrk)
on the last one, so the client does not take CPU from the servers. PostgreSQL is the
machine's shared server and is not pinned.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import websockets
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks.service import (
    PG_URL,
    TINY,
    Subscriber,
    drop_database,
    fresh_database,
    percentile,
    processes_cpu,
    wrk,
)
from crunchql.core.settings import normalise_database_url
from tests.e2e.processes import (
    HttpGraphQL,
    PrivateRedis,
    ServiceProcess,
    free_port,
    service_env,
    start_api,
    start_worker,
    wait_healthy,
    wait_ready,
)

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
WARM_UP_JOBS = 20
SUBMIT = "mutation($i: CalculationInput!) { submitCalculation(input: $i) { id } }"
UVICORN = [sys.executable, "-m", "uvicorn", "benchmarks.classic.api:app"]
CELERY = [sys.executable, "-m", "celery", "-A", "benchmarks.classic.celery_app", "worker"]
# crunchql's per-user caps on active (queued + running) and running calculations. The
# classic service has none, and wrk's flood and the WebSocket clients are all one user's:
# "off" (0) is the same job as the classic one; "lifted" keeps the caps on, too high to
# refuse anything, so the run still pays their statements (the submit's owner lock and
# count, the claim's lock and count of the owner's live runs, the look for parked runs).
CRUNCHQL_CAPS = {
    "off": {"CRUNCHQL_MAX_ACTIVE_CALCULATIONS": "0", "CRUNCHQL_MAX_RUNNING_PER_USER": "0"},
    "lifted": {
        "CRUNCHQL_MAX_ACTIVE_CALCULATIONS": "1000000",
        "CRUNCHQL_MAX_RUNNING_PER_USER": "1000000",
    },
}


# --- the two clients: one protocol, two wire formats ---------------------------------------


class Client(Protocol):
    async def open(self) -> Client: ...

    async def submit(self) -> str: ...

    async def watch(self, calculation_id: str) -> Awaitable[float]:
        """Start watching; the awaitable gives ``perf_counter()`` at the terminal status."""
        ...

    async def close(self) -> None: ...


class CrunchqlClient:
    """submitCalculation over HTTP, calculationUpdates on one open WebSocket connection."""

    def __init__(self, base: str, token: str, http: httpx.AsyncClient) -> None:
        self.base, self.token, self.http = base, token, http
        self.subscriber = Subscriber(base, token)

    async def open(self) -> CrunchqlClient:
        await self.subscriber.__aenter__()
        return self

    async def submit(self) -> str:
        response = await self.http.post(
            f"http://{self.base}/graphql",
            json={"query": SUBMIT, "variables": {"i": TINY}},
            headers={"Authorization": f"Bearer {self.token}"},
        )
        body = response.json()
        if not body.get("data"):
            raise RuntimeError(f"submitCalculation failed: {body}")
        return str(body["data"]["submitCalculation"]["id"])

    async def watch(self, calculation_id: str) -> Awaitable[float]:
        return await self.subscriber.watch(calculation_id)

    async def close(self) -> None:
        await self.subscriber.__aexit__()


class ClassicClient:
    """POST /calculations, then a WebSocket to /ws/{id} until the terminal status."""

    def __init__(self, base: str, token: str, http: httpx.AsyncClient) -> None:
        self.base, self.token, self.http = base, token, http

    async def open(self) -> ClassicClient:
        return self

    async def submit(self) -> str:
        response = await self.http.post(
            f"http://{self.base}/calculations",
            json=TINY,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        response.raise_for_status()
        return str(response.json()["id"])

    async def watch(self, calculation_id: str) -> Awaitable[float]:
        socket = await websockets.connect(
            f"ws://{self.base}/ws/{calculation_id}?token={self.token}"
        )

        async def terminal() -> float:
            try:
                async for raw in socket:
                    if json.loads(raw)["status"] in TERMINAL:
                        return time.perf_counter()
                raise RuntimeError(f"/ws/{calculation_id} closed before a terminal status")
            finally:
                await socket.close()

        return asyncio.ensure_future(terminal())

    async def close(self) -> None:
        pass


# --- the stacks ----------------------------------------------------------------------------


@dataclass
class Stack:
    name: str
    base: str
    token: str
    database_url: str
    make_client: Callable[[str, str, httpx.AsyncClient], Client]
    submit_url: str
    submit_body: dict[str, Any]
    processes: list[ServiceProcess] = field(default_factory=list)
    redis: ServiceProcess | None = None

    async def client(self, http: httpx.AsyncClient) -> Client:
        return await self.make_client(self.base, self.token, http).open()


async def create_classic_database() -> str:
    from benchmarks.classic.db import Base

    admin_url = normalise_database_url(PG_URL)
    name = f"classic_bench_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    await engine.dispose()
    return url


def plain_postgres_url(url: str) -> str:
    """postgresql://... without the driver (the classic service picks its own)."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgresql") else url


def start_classic(
    database_url: str, redis_url: str, log_dir: Path, pool: str
) -> tuple[ServiceProcess, ServiceProcess, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLASSIC_")}
    env.update(
        CLASSIC_DATABASE_URL=plain_postgres_url(database_url),
        CLASSIC_REDIS_URL=redis_url,
        CLASSIC_JWT_SECRET=secrets.token_urlsafe(32),
        PYTHONUNBUFFERED="1",
    )
    port = free_port()
    api = ServiceProcess(
        "classic-api",
        [*UVICORN, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env,
        log_dir,
    )
    worker = ServiceProcess(
        "classic-worker",
        [*CELERY, "--pool", pool, "--concurrency", "1", "--loglevel", "WARNING"],
        env,
        log_dir,
    )
    return api, worker, f"127.0.0.1:{port}"


async def classic_token(base: str, api: ServiceProcess) -> str:
    async with httpx.AsyncClient(timeout=30) as http:
        deadline = time.monotonic() + 60
        while True:
            try:
                if (await http.get(f"http://{base}/healthz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if api.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the classic API did not start:\n{api.log()}")
            await asyncio.sleep(0.1)
        response = await http.post(
            f"http://{base}/register",
            json={"email": f"bench-{uuid.uuid4().hex[:8]}@example.com", "password": "x" * 16},
        )
        response.raise_for_status()
        return str(response.json()["access_token"])


async def check_same_result(crunchql: Stack, classic: Stack) -> str:
    """One tiny job on each stack: the same kernel gives the same estimate."""
    async with httpx.AsyncClient(timeout=30) as http:
        classic_client = await classic.client(http)
        calculation_id = await classic_client.submit()
        await asyncio.wait_for(await classic_client.watch(calculation_id), 180)
        body = (
            await http.get(
                f"http://{classic.base}/calculations/{calculation_id}",
                headers={"Authorization": f"Bearer {classic.token}"},
            )
        ).json()
        crunchql_client = await crunchql.client(http)
        try:
            crunchql_id = await crunchql_client.submit()
            await asyncio.wait_for(await crunchql_client.watch(crunchql_id), 180)
        finally:
            await crunchql_client.close()
        graphql = HttpGraphQL(crunchql.base)
        graphql.token = crunchql.token
        stored = await graphql.get(
            crunchql_id, "status result { ... on MonteCarloPiResult { estimate } }"
        )
        await graphql.close()
    ours, theirs = stored["result"]["estimate"], body["result"]["estimate"]
    if body["status"] != "SUCCEEDED" or ours != theirs:
        raise RuntimeError(f"the stacks disagree: classic {body}, crunchql {stored}")
    return f"both stacks estimate pi = {ours} for monteCarloPi(samples=1000, seed=1)"


# --- the measurements ----------------------------------------------------------------------


async def latency(stack: Stack, jobs: int) -> list[float]:
    samples = []
    async with httpx.AsyncClient(timeout=30) as http:
        client = await stack.client(http)
        try:
            for index in range(jobs + WARM_UP_JOBS):
                started = time.perf_counter()
                calculation_id = await client.submit()
                finished = await asyncio.wait_for(await client.watch(calculation_id), 30)
                if index >= WARM_UP_JOBS:
                    samples.append((finished - started) * 1000)
        finally:
            await client.close()
    return samples


async def throughput(
    stack: Stack, seconds: float, concurrency: int
) -> tuple[float, dict[str, float]]:
    """Calculations per second with ``concurrency`` clients, each submitting and awaiting
    the terminal event in a loop, and the CPU each component spent per calculation."""
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        clients = [await stack.client(http) for _ in range(concurrency)]
        completed = 0
        cpu_before = await cpu_snapshot(stack)
        deadline = time.perf_counter() + seconds

        async def loop(client: Client) -> None:
            nonlocal completed
            while time.perf_counter() < deadline:
                calculation_id = await client.submit()
                await asyncio.wait_for(await client.watch(calculation_id), 60)
                completed += 1

        try:
            started = time.perf_counter()
            await asyncio.gather(*(loop(client) for client in clients))
            rate = completed / (time.perf_counter() - started)
            return rate, cpu_per_job(cpu_before, await cpu_snapshot(stack), completed)
        finally:
            for client in clients:
                await client.close()


async def stored_per_second(
    stack: Stack, seconds: float, connections: int, client_cpus: set[int] | None
) -> tuple[float, dict[str, float]]:
    """wrk floods the submit; jobs stored per second, first created to last finished,
    counting only this run's jobs (both stacks' tables have these columns), and the CPU
    each component spent per stored job over the flood and its drain."""
    since = datetime.now(UTC)
    cpu_before = await cpu_snapshot(stack)

    def pinned_wrk() -> float:  # wrk inherits the affinity of the thread that starts it
        pin(client_cpus)
        headers = {"Authorization": f"Bearer {stack.token}"}
        return wrk(stack.submit_url, stack.submit_body, headers, seconds, connections)

    await asyncio.to_thread(pinned_wrk)
    engine = create_async_engine(stack.database_url)
    try:
        deadline = time.monotonic() + 300
        while True:
            async with engine.connect() as connection:
                pending = (
                    await connection.execute(
                        text(
                            "SELECT count(*) FROM calculations WHERE created_at >= :since "
                            "AND status IN ('QUEUED', 'RUNNING')"
                        ),
                        {"since": since},
                    )
                ).scalar_one()
            if pending == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{stack.name}: {pending} jobs still pending after 300 s")
            await asyncio.sleep(0.25)
        cpu_after = await cpu_snapshot(stack)
        async with engine.connect() as connection:
            first, last, done = (
                await connection.execute(
                    text(
                        "SELECT min(created_at), max(finished_at), count(*) FROM calculations "
                        "WHERE created_at >= :since AND status = 'SUCCEEDED'"
                    ),
                    {"since": since},
                )
            ).one()
    finally:
        await engine.dispose()
    return float(done / (last - first).total_seconds()), cpu_per_job(cpu_before, cpu_after, done)


# --- the run -------------------------------------------------------------------------------


def pin(cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)


# --- CPU per job, per component --------------------------------------------------------------


async def cpu_snapshot(stack: Stack) -> dict[str, Any]:
    """CPU seconds so far of the stack's API, worker and Redis processes, and of the
    PostgreSQL backends connected to its database (by backend pid: one that comes and
    goes between two snapshots is missed, so the PostgreSQL figure is a floor)."""
    # A service's processes share its process group (ServiceProcess starts each in a
    # session of its own; the worker's forked processes stay in it).
    api, worker = stack.processes
    groups = {api.process.pid, worker.process.pid}
    if stack.redis is not None:
        groups.add(stack.redis.process.pid)
    by_group = dict.fromkeys(groups, 0.0)
    for each in processes_cpu():
        if each.group in by_group:
            by_group[each.group] += each.seconds
    engine = create_async_engine(stack.database_url)
    try:
        async with engine.connect() as connection:
            pids = (
                (
                    await connection.execute(
                        text(
                            "SELECT pid FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    )
                )
                .scalars()
                .all()
            )
    finally:
        await engine.dispose()
    backends = set(pids)
    return {
        "API": by_group[api.process.pid],
        "worker": by_group[worker.process.pid],
        "Redis": by_group[stack.redis.process.pid] if stack.redis is not None else 0.0,
        "postgres": {each.pid: each.seconds for each in processes_cpu() if each.pid in backends},
    }


def cpu_per_job(before: dict[str, Any], after: dict[str, Any], jobs: int) -> dict[str, float]:
    """Milliseconds of CPU per job of each component between two snapshots."""
    per_job = {
        part: (after[part] - before[part]) * 1000 / jobs for part in ("API", "worker", "Redis")
    }
    backends = after["postgres"]
    per_job["PostgreSQL"] = (
        sum(seconds - before["postgres"].get(pid, 0.0) for pid, seconds in backends.items())
        * 1000
        / jobs
    )
    return per_job


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=200, help="latency jobs per round")
    parser.add_argument("--throughput-seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--wrk-seconds", type=float, default=3.0, help="0: skip the wrk row")
    parser.add_argument("--celery-pool", choices=["prefork", "solo"], default="prefork")
    parser.add_argument("--no-pin", action="store_true", help="let every process use any core")
    parser.add_argument(
        "--crunchql-caps",
        choices=sorted(CRUNCHQL_CAPS),
        default="off",
        help="crunchql's per-user caps: off (as the classic service, which has none) or "
        "lifted (on, but too high to refuse anything: their statements still run)",
    )
    args = parser.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = client_cpus = None
    if not args.no_pin and len(cpus) >= 2:
        server_cpus, client_cpus = set(cpus[:-1]), {cpus[-1]}
    load_before = os.getloadavg()
    started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())

    log_dir = Path(tempfile.mkdtemp(prefix="crunchql-versus-"))
    crunchql_db = await fresh_database()
    classic_db = await create_classic_database()
    processes: list[ServiceProcess] = []
    redises: list[PrivateRedis] = []
    try:
        # Children inherit the affinity of the process that starts them.
        pin(server_cpus)
        redises = [await PrivateRedis.start(log_dir), await PrivateRedis.start(log_dir)]
        env = service_env(
            crunchql_db,
            redises[0].url,
            CRUNCHQL_LOG_LEVEL="WARNING",
            CRUNCHQL_METRICS="false",
            # One user's --concurrency clients each hold a socket (the default allows 10).
            CRUNCHQL_WS_MAX_SOCKETS_PER_USER=str(max(10, 2 * args.concurrency)),
            **CRUNCHQL_CAPS[args.crunchql_caps],
        )
        api, crunchql_base = start_api(env, log_dir)
        worker = start_worker(env, log_dir, threads=8)
        classic_api, classic_worker, classic_base = start_classic(
            classic_db, redises[1].url, log_dir, args.celery_pool
        )
        processes = [api, worker, classic_api, classic_worker]
        pin(client_cpus)

        await wait_healthy(crunchql_base, api)
        await wait_ready(crunchql_base, worker)
        graphql = HttpGraphQL(crunchql_base)
        crunchql_token = await graphql.register()
        await graphql.close()
        crunchql = Stack(
            "crunchql",
            crunchql_base,
            crunchql_token,
            crunchql_db,
            CrunchqlClient,
            f"http://{crunchql_base}/graphql",
            {"query": SUBMIT, "variables": {"i": TINY}},
            [api, worker],
            redises[0].process,
        )
        classic = Stack(
            "classic",
            classic_base,
            await classic_token(classic_base, classic_api),
            classic_db,
            ClassicClient,
            f"http://{classic_base}/calculations",
            TINY,
            [classic_api, classic_worker],
            redises[1].process,
        )
        print(await check_same_result(crunchql, classic), flush=True)

        rows: dict[str, dict[str, list[float]]] = {}

        def record(row: str, stack: Stack, value: float) -> None:
            rows.setdefault(row, {"classic": [], "crunchql": []})[stack.name].append(value)

        for round_ in range(args.rounds):
            order = [classic, crunchql] if round_ % 2 == 0 else [crunchql, classic]
            for stack in order:
                samples = await latency(stack, args.jobs)
                record("submit → terminal event p50 (ms)", stack, statistics.median(samples))
                record("submit → terminal event p99 (ms)", stack, percentile(samples, 99))
            for stack in order:
                rate, cpu = await throughput(stack, args.throughput_seconds, args.concurrency)
                record(f"tiny calculations/s, {args.concurrency} WebSocket clients", stack, rate)
                for part, milliseconds in cpu.items():
                    record(f"CPU per job, WebSocket clients, {part} (ms)", stack, milliseconds)
            if args.wrk_seconds:
                for stack in order:
                    rate, cpu = await stored_per_second(
                        stack, args.wrk_seconds, args.concurrency, client_cpus
                    )
                    record("tiny calculations/s, wrk submit → stored result", stack, rate)
                    for part, milliseconds in cpu.items():
                        record(f"CPU per job, wrk flood, {part} (ms)", stack, milliseconds)
                    record("CPU per job, wrk flood, all (ms)", stack, sum(cpu.values()))
            print(f"round {round_ + 1} of {args.rounds} done", flush=True)
            for process in processes:
                if process.process.poll() is not None:
                    raise RuntimeError(f"{process.name} exited:\n{process.log()}")
    finally:
        for process in processes:
            process.stop()
        for redis in redises:
            redis.stop()
        await drop_database(crunchql_db)
        await drop_database(classic_db)

    shutil.rmtree(log_dir, ignore_errors=True)  # kept when a run fails, for its logs
    load_after = os.getloadavg()
    pinning = (
        f"servers on CPU {sorted(server_cpus)}, load generator on CPU {sorted(client_cpus)}"
        if server_cpus and client_cpus
        else "no pinning"
    )
    print(
        f"\ncrunchql vs FastAPI + Celery — {started_at} — {os.cpu_count()} cores — {pinning}\n"
        f"load average {load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end; "
        f"medians of {args.rounds} rounds; Celery --pool {args.celery_pool} --concurrency 1, "
        "crunchql worker --processes 1 --threads 8; one Uvicorn process each; "
        f"crunchql's per-user caps {args.crunchql_caps}"
    )
    print_table(rows)


def print_table(rows: dict[str, dict[str, list[float]]]) -> None:
    width = max(len(name) for name in rows)
    print(f"{'row'.ljust(width)} | {'classic':>8} | {'crunchql':>8} | ratio")
    print(f"{'-' * width}-|-{'-' * 8}-|-{'-' * 8}-|------")
    for name, values in rows.items():
        classic = statistics.median(values["classic"])
        crunchql = statistics.median(values["crunchql"])
        # > 1: crunchql ahead (lower latency, or more calculations per second)
        better, worse = (classic, crunchql) if "(ms)" in name else (crunchql, classic)
        # A CPU figure can be 0 in a short run (/proc counts in clock ticks of 10 ms).
        ratio = f"{better / worse:.2f}" if worse else "-"
        print(f"{name.ljust(width)} | {classic:8.1f} | {crunchql:8.1f} | {ratio}")
    print("\nratio > 1: crunchql ahead. Every round:")
    for name, values in rows.items():
        each = "; ".join(
            f"{stack} " + " / ".join(f"{v:.1f}" for v in values[stack])
            for stack in ("classic", "crunchql")
        )
        print(f"  {name}: {each}")


if __name__ == "__main__":
    asyncio.run(main())
