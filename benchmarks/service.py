"""Service benchmarks on the production path (PostgreSQL + Redis + Uvicorn + worker).

    python -m benchmarks.service [--jobs 300] [--throughput-seconds 10] [--concurrency 32]
                                 [--idle-jobs 200] [--idle-gap 1.5] [--only idle]
                                 [--only jobs] [--users 16] [--worker-threads 8]
                                 [--profile DIR] [--env NAME=VALUE ...]

Prints one table:
- latency from `submitCalculation` to the terminal event at a WebSocket client, for a
  tiny calculation, one job at a time (p50 / p99 over --jobs jobs);
- the same with an idle worker: --idle-jobs jobs, --idle-gap seconds apart, so each one
  finds the worker's consumer asleep on its wake-up list (a missed wake-up shows as a
  p99 of about 1 s, the consumer's fall-back timeout);
- for both, where the time went (medians): the submit's HTTP request at the client,
  the row's created → started and started → finished (the database's timestamps), and
  finished → the event's receipt (one machine, one clock);
- calculations per second through the whole path (HTTP submit → queue → worker →
  PostgreSQL → Redis pub/sub → WebSocket), tiny jobs, --concurrency clients;
- authenticated `{ me { id email } }` requests per second against a bare Strawberry
  `{ hello }` app served the same way, side by side (ratio);
- this client's own HTTP round trip to that bare app, back to back and --idle-gap
  seconds apart: the floor under every submit it measures;
- what this machine charges for touching a page of memory again, back to back and after
  --idle-gap seconds asleep (a virtual machine with nested paging charges an idle
  process again for every page it touches on waking: the idle rows' floor);
- Redis connections held by the API with many open subscriptions, and memory per
  open subscription;
- CPU time of the API process and of the worker processes per tiny job, during the
  wrk flood (less sensitive to other load on the machine than the wall-clock rows).

``--profile DIR`` writes py-spy flame graphs of the API and the worker during the wrk
flood (``pip install py-spy``; py-spy needs ptrace rights).

Needs PostgreSQL and Redis (TEST_DATABASE_URL / TEST_REDIS_URL as for the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import websockets
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from crunchql.core.settings import normalise_database_url
from crunchql.db.migrate import upgrade_async
from tests.e2e.processes import (
    HttpGraphQL,
    ServiceProcess,
    free_port,
    service_env,
    start_api,
    start_worker,
    wait_healthy,
    wait_ready,
)

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TINY = {"monteCarloPi": {"samples": 1000, "seed": 1}}
SUBSCRIBE = "subscription($id: ID!) { calculationUpdates(id: $id) { status } }"

BARE_APP = """
import strawberry
from strawberry.asgi import GraphQL
from strawberry.extensions import ParserCache, ValidationCache

@strawberry.type
class Query:
    @strawberry.field
    def hello(self) -> str:
        return "world"

app = GraphQL(strawberry.Schema(Query, extensions=[lambda: ParserCache(maxsize=1024),
                                                   lambda: ValidationCache(maxsize=1024)]))
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def fresh_database() -> str:
    admin_url = normalise_database_url(PG_URL)
    name = f"crunchql_bench_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    await upgrade_async(url)
    return url


async def drop_database(url: str) -> None:
    admin = create_async_engine(normalise_database_url(PG_URL), isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(
            text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
        )
    await admin.dispose()


class Subscriber:
    """One graphql-transport-ws connection multiplexing many subscriptions."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.counter = 0

    async def __aenter__(self) -> Subscriber:
        self.socket = await websockets.connect(
            f"ws://{self.base}/graphql", subprotocols=["graphql-transport-ws"], max_queue=None
        )
        await self.socket.send(
            json.dumps(
                {"type": "connection_init", "payload": {"Authorization": f"Bearer {self.token}"}}
            )
        )
        assert json.loads(await self.socket.recv())["type"] == "connection_ack"
        self.reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reader.cancel()
        await self.socket.close()

    async def _read(self) -> None:
        async for raw in self.socket:
            message = json.loads(raw)
            if message["type"] == "error":  # e.g. refused by a server limit: fail fast
                future = self.waiters.get(message["id"])
                if future and not future.done():
                    future.set_exception(RuntimeError(f"subscription refused: {message}"))
            elif message["type"] == "next":
                status = message["payload"]["data"]["calculationUpdates"]["status"]
                future = self.waiters.get(message["id"])
                if future and not future.done() and status in ("SUCCEEDED", "FAILED", "CANCELLED"):
                    future.set_result(time.perf_counter())

    async def watch(self, calculation_id: str) -> asyncio.Future[float]:
        self.counter += 1
        op_id = str(self.counter)
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters[op_id] = future
        await self.socket.send(
            json.dumps(
                {
                    "id": op_id,
                    "type": "subscribe",
                    "payload": {"query": SUBSCRIBE, "variables": {"id": calculation_id}},
                }
            )
        )
        return future


async def submit(http: httpx.AsyncClient, url: str, token: str) -> str:
    response = await http.post(
        url,
        json={
            "query": "mutation($i: CalculationInput!) { submitCalculation(input: $i) { id } }",
            "variables": {"i": TINY},
        },
        headers={"Authorization": f"Bearer {token}"},
    )
    return str(response.json()["data"]["submitCalculation"]["id"])


@dataclass
class Job:
    """One measured job: its id and the client's clock (epoch seconds) at the submit, at
    the submit's response and at the terminal event's receipt."""

    id: str
    submitted: float
    responded: float
    received: float

    @property
    def total_ms(self) -> float:
        return (self.received - self.submitted) * 1000

    @property
    def after_response_ms(self) -> float:
        return (self.received - self.responded) * 1000


async def latency(base: str, token: str, jobs: int, gap: float = 0.0) -> list[Job]:
    """Submit → terminal event at the client, one job at a time, ``gap`` seconds apart
    (after 20 warm-up jobs, not returned)."""
    measured = []
    async with httpx.AsyncClient() as http, Subscriber(base, token) as subscriber:
        url = f"http://{base}/graphql"
        for index in range(jobs + 20):
            if gap and index >= 20:
                await asyncio.sleep(gap)
            submitted = time.time()
            calculation_id = await submit(http, url, token)
            responded = time.time()
            done = await subscriber.watch(calculation_id)
            await asyncio.wait_for(done, 30)
            if index >= 20:  # warm-up
                measured.append(Job(calculation_id, submitted, responded, time.time()))
    return measured


async def stages(database_url: str, jobs: list[Job]) -> dict[str, float]:
    """Medians (ms) of where each job's time went, from the client's clock and the
    database's timestamps (one machine, one clock): the submit's HTTP request, the row's
    creation → its start (enqueue, pick-up, claim), start → finish (the run, the finish),
    and the finish → the terminal event's receipt (publish, fan-out, the socket)."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    text(
                        "SELECT CAST(id AS text), extract(epoch FROM created_at), "
                        "extract(epoch FROM started_at), extract(epoch FROM finished_at) "
                        "FROM calculations WHERE id = ANY(CAST(:ids AS uuid[]))"
                    ),
                    {"ids": [job.id for job in jobs]},
                )
            ).all()
    finally:
        await engine.dispose()
    times = {row[0]: tuple(float(each) for each in row[1:]) for row in rows}
    parts: dict[str, list[float]] = {"http": [], "queued": [], "running": [], "delivery": []}
    for job in jobs:
        created, started, finished = times[job.id]
        parts["http"].append(job.responded - job.submitted)
        parts["queued"].append(started - created)
        parts["running"].append(finished - started)
        parts["delivery"].append(job.received - finished)
    return {name: statistics.median(values) * 1000 for name, values in parts.items()}


def stages_row(parts: dict[str, float]) -> tuple[str, str, str]:
    return (
        "  of which submit request / queued / run / delivery (p50)",
        f"{parts['http']:.1f} / {parts['queued']:.1f} / {parts['running']:.1f} / "
        f"{parts['delivery']:.1f} ms",
        "the submit's HTTP request at the client; the database's created → started "
        "(enqueue, pick-up, claim), started → finished (run, finish); finished → receipt",
    )


async def client_floor(url: str, requests: int, gap: float) -> float:
    """p50 (ms) of the benchmark client's own HTTP round trip (httpx) to a bare Strawberry
    ``{ hello }``, ``gap`` seconds apart: what any service measured by this client pays."""
    samples = []
    async with httpx.AsyncClient() as http:
        for index in range(requests + 5):
            if gap and index >= 5:
                await asyncio.sleep(gap)
            started = time.perf_counter()
            (await http.post(url, json={"query": "{ hello }"})).raise_for_status()
            if index >= 5:
                samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def page_touch_cost(gap: float, pages: int = 1000, rounds: int = 8) -> float:
    """µs per 4 KiB page to touch ``pages`` pages of this process's memory again after
    ``gap`` seconds asleep (median of ``rounds``). On a bare machine it is the same
    either way (a few ns); a virtual machine whose host drops an idle guest's page
    mappings (nested paging) charges each page again on wake-up, and a request that
    touches a thousand pages of code and heap after a quiet second pays for every one:
    the "idle" rows above measure that machine as much as the service."""
    memory = bytearray(pages * 4096)
    for offset in range(0, len(memory), 4096):
        memory[offset] = 1
    samples = []
    for _ in range(rounds):
        time.sleep(gap)
        started = time.perf_counter()
        total = 0
        for offset in range(0, len(memory), 4096):
            total += memory[offset]
        samples.append((time.perf_counter() - started) / pages * 1e6)
    return statistics.median(samples)


async def throughput(base: str, tokens: list[str], seconds: float, concurrency: int) -> float:
    """``concurrency`` clients, client i acting as user ``i % len(tokens)``, each with a
    socket of its own."""
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency))
        )
        subscribers = [await stack.enter_async_context(Subscriber(base, token)) for token in tokens]
        url = f"http://{base}/graphql"
        completed = 0
        deadline = time.perf_counter() + seconds

        async def client(number: int) -> None:
            nonlocal completed
            token, subscriber = tokens[number % len(tokens)], subscribers[number % len(tokens)]
            while time.perf_counter() < deadline:
                calculation_id = await submit(http, url, token)
                await asyncio.wait_for(await subscriber.watch(calculation_id), 60)
                completed += 1

        started = time.perf_counter()
        await asyncio.gather(*(client(number) for number in range(concurrency)))
        return completed / (time.perf_counter() - started)


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
%s
"""

# Requests in turn as each of several users (one Authorization header per request).
WRK_USERS = """
tokens = {%s}
counter = 0
request = function()
    counter = counter + 1
    wrk.headers["Authorization"] = "Bearer " .. tokens[counter %% #tokens + 1]
    return wrk.format()
end
"""


def wrk(
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    seconds: float,
    connections: int = 16,
    tokens: list[str] | None = None,
) -> float:
    """Requests per second by wrk (C, one thread on the other core): the load generator
    must not be the bottleneck, as a Python client would be. With ``tokens``, requests
    go out as each of those users in turn."""
    header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    if tokens:
        header_lines += WRK_USERS % ", ".join(f'"{token}"' for token in tokens)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % (json.dumps(body), header_lines))
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    if "Non-2xx" in output:
        raise RuntimeError(f"wrk saw errors:\n{output}")
    return float(output.split("Requests/sec:")[1].split()[0])


async def round_trips(database_url: str) -> dict[str, float]:
    """Counters of work done: the benchmark database's transactions (commits and
    rollbacks, pg_stat_database) and connections opened to it (``sessions``), and the
    commands sent to the Redis server (INFO commandstats; only this benchmark's when
    REDIS_URL is a private server)."""
    from redis.asyncio import Redis

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            transactions, sessions = (
                await connection.execute(
                    text(
                        "SELECT xact_commit + xact_rollback, sessions FROM pg_stat_database "
                        "WHERE datname = current_database()"
                    )
                )
            ).one()
    finally:
        await engine.dispose()
    redis = Redis.from_url(REDIS_URL)
    try:
        stats = await redis.info("commandstats")
    finally:
        await redis.aclose()
    # What clients send; the commands Dramatiq's Lua script runs inside the server are
    # counted by Redis too, and left out here.
    sent = ("evalsha", "publish", "lpush", "ltrim", "blpop", "script|exists", "script|load")
    commands = sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in sent)
    return {
        "transactions": float(transactions),
        "connections": float(sessions),
        "redis": float(commands),
    }


@dataclass(frozen=True)
class ProcessCpu:
    pid: int
    parent: int
    group: int
    seconds: float  # user + system CPU time so far


def processes_cpu() -> list[ProcessCpu]:
    """Every live process's CPU time so far, from /proc/PID/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    processes = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            _, tail = stat.read_text().rsplit(")", 1)  # after "pid (comm)"
        except OSError:
            continue  # exited meanwhile
        fields = tail.split()  # state, ppid, pgrp, …, utime (11), stime (12)
        seconds = (int(fields[11]) + int(fields[12])) / tick
        processes.append(ProcessCpu(int(stat.parent.name), int(fields[1]), int(fields[2]), seconds))
    return processes


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children (a worker forks)."""
    return sum(each.seconds for each in processes_cpu() if pid in (each.pid, each.parent))


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on ``pid`` and its children: a flame graph (.svg) or collapsed stacks
    (.txt, for counting per layer)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    kind = "raw" if out.suffix == ".txt" else "flamegraph"
    return subprocess.Popen(
        [
            *(spy, "record", "--pid", str(pid), "--subprocesses", "--nonblocking"),
            *("--rate", "200", "--format", kind, "-o", str(out)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def submit_throughput(
    base: str,
    tokens: list[str],
    database_url: str,
    seconds: float,
    connections: int,
    processes: dict[str, int],
    profile: Path | None = None,
) -> tuple[float, int, dict[str, float]]:
    """wrk floods submitCalculation with tiny jobs; the rate is jobs finished per second
    from the first submission to the last result stored (the whole path but the socket).
    Also the CPU seconds each of ``processes`` spent per job meanwhile (ms)."""
    body = {
        "query": "mutation($i: CalculationInput!) { submitCalculation(input: $i) { id } }",
        "variables": {"i": TINY},
    }
    profilers = []
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        profilers = [
            start_profiler(pid, profile / f"{name}.{suffix}")
            for name, pid in processes.items()
            for suffix in ("svg", "txt")
        ]
        await asyncio.sleep(1.0)  # attached
    engine = create_async_engine(database_url)
    async with engine.connect() as connection:
        # Only this flood's jobs: the earlier rows' SUCCEEDED (latency, WebSocket clients)
        # would stretch the window back to the first of them.
        flood_started = (await connection.execute(text("SELECT now()"))).scalar_one()
    cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    counts_before = await round_trips(database_url)
    await asyncio.to_thread(
        wrk,
        f"http://{base}/graphql",
        body,
        {},
        seconds,
        connections,
        tokens,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            async with engine.connect() as connection:
                pending = (
                    await connection.execute(
                        text(
                            "SELECT count(*) FROM calculations "
                            "WHERE status IN ('QUEUED', 'RUNNING')"
                        )
                    )
                ).scalar_one()
            if pending == 0:
                break
            await asyncio.sleep(0.5)
        cpu_after = {name: cpu_seconds(pid) for name, pid in processes.items()}
        await asyncio.sleep(1.5)  # PostgreSQL's backends flush their statistics
        counts_after = await round_trips(database_url)
        for profiler in profilers:
            profiler.send_signal(signal.SIGINT)
            await asyncio.to_thread(profiler.wait, 60)
        async with engine.connect() as connection:
            first, last, done = (
                await connection.execute(
                    text(
                        "SELECT min(created_at), max(finished_at), count(*) FROM calculations "
                        "WHERE status = 'SUCCEEDED' AND created_at >= :started"
                    ),
                    {"started": flood_started},
                )
            ).one()
    finally:
        await engine.dispose()
    per_job = {name: (cpu_after[name] - cpu_before[name]) * 1000 / done for name in processes}
    per_job.update(
        {name: (counts_after[name] - counts_before[name]) / done for name in counts_after}
    )
    return done / (last - first).total_seconds(), int(done), per_job


async def subscription_footprint(
    base: str, token: str, api: ServiceProcess, count: int
) -> tuple[int, float]:
    """Open `count` subscriptions on QUEUED calculations; Redis connections and RSS per one."""
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL)

    def rss_kib() -> int:
        for line in Path(f"/proc/{api.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    async with httpx.AsyncClient() as http:
        url = f"http://{base}/graphql"
        ids = [await submit(http, url, token) for _ in range(count)]
    before = rss_kib()
    sockets = []
    for start in range(0, count, 100):
        subscriber = Subscriber(base, token)
        await subscriber.__aenter__()
        sockets.append(subscriber)
        for calculation_id in ids[start : start + 100]:
            await subscriber.watch(calculation_id)
    await asyncio.sleep(2)  # let the server settle its buffers before reading RSS
    after = rss_kib()
    clients = await redis.client_list()
    pubsub_connections = sum(
        1 for c in clients if int(c.get("sub", 0)) > 0 or int(c.get("psub", 0)) > 0
    )
    for subscriber in sockets:
        await subscriber.__aexit__()
    await redis.aclose()
    return pubsub_connections, (after - before) / count


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--throughput-seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--users", type=int, default=16, help="users the throughput clients act as, in turn"
    )
    parser.add_argument("--subscriptions", type=int, default=1000)
    parser.add_argument(
        "--worker-threads", type=int, default=8, help="crunchql worker --threads (concurrent jobs)"
    )
    parser.add_argument("--idle-jobs", type=int, default=200)
    parser.add_argument("--idle-gap", type=float, default=1.5, help="seconds between idle jobs")
    parser.add_argument(
        "--only",
        choices=["idle", "jobs"],
        help="run only this part of the table (jobs: latency, throughput and CPU rows)",
    )
    parser.add_argument("--profile", metavar="DIR", help="py-spy flame graphs of the wrk flood")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the API and worker processes (repeatable), e.g. "
        "CRUNCHQL_DATABASE_POOL_SIZE=20",
    )
    args = parser.parse_args()
    settings = dict(each.split("=", 1) for each in args.env)

    database_url = await fresh_database()
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL)
    await redis.flushdb()
    log_dir = Path(tempfile.mkdtemp(prefix="crunchql-bench-"))
    env = service_env(
        database_url,
        REDIS_URL,
        CRUNCHQL_LOG_LEVEL="WARNING",
        CRUNCHQL_METRICS="false",
        # One socket carries every latency job's subscription: 300 a minute per socket
        # (the default) refused the 301st.
        CRUNCHQL_WS_OPERATIONS_PER_MINUTE="1000000",
        # The floods queue far more than 20 calculations per user (the default cap of
        # queued + running): measured is the path, not the refusals. The per-user running
        # limit stays at its default (2), over --users users.
        CRUNCHQL_MAX_ACTIVE_CALCULATIONS="1000000",
        **settings,
    )
    api, base = start_api(env, log_dir)
    worker = start_worker(env, log_dir, threads=args.worker_threads)
    bare_port = free_port()
    (log_dir / "bare_app.py").write_text(BARE_APP)
    bare = ServiceProcess(
        "bare",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(log_dir),
            "bare_app:app",
            "--port",
            str(bare_port),
            "--log-level",
            "warning",
        ],
        env,
        log_dir,
    )
    rows: list[tuple[str, str, str]] = []
    try:
        await wait_healthy(base, api)
        await wait_ready(base, worker)
        tokens = []
        for _ in range(args.users):
            graphql = HttpGraphQL(base)
            tokens.append(await graphql.register())
            await graphql.close()
        token = tokens[0]

        if args.idle_jobs:
            idle_jobs = await latency(base, token, args.idle_jobs, args.idle_gap)
            idle = [job.total_ms for job in idle_jobs]
            after = [job.after_response_ms for job in idle_jobs]
            note = f"{args.idle_jobs} jobs {args.idle_gap} s apart (idle worker)"
            rows.append(
                (
                    "submit → terminal event, tiny job, idle (p50)",
                    f"{statistics.median(idle):.1f} ms",
                    note,
                )
            )
            rows.append(
                (
                    "submit → terminal event, tiny job, idle (p99)",
                    f"{percentile(idle, 99):.1f} ms",
                    f"max {max(idle):.1f} ms; jobs over 500 ms: "
                    f"{sum(each > 500 for each in idle)} (a missed wake-up costs 1 s)",
                )
            )
            rows.append(stages_row(await stages(database_url, idle_jobs)))
            rows.append(
                (
                    "submit response → terminal event, idle (p50 / p99)",
                    f"{statistics.median(after):.1f} / {percentile(after, 99):.1f} ms",
                    f"pick-up + run + delivery alone; max {max(after):.1f} ms, "
                    f"over 500 ms: {sum(each > 500 for each in after)}",
                )
            )
        if args.only == "idle":
            print_table(rows)
            return

        busy_jobs = await latency(base, token, args.jobs)
        samples = [job.total_ms for job in busy_jobs]
        rows.append(
            (
                "submit → terminal event, tiny job (p50)",
                f"{statistics.median(samples):.1f} ms",
                f"{args.jobs} jobs, one at a time, target ≤ 10 ms",
            )
        )
        rows.append(
            (
                "submit → terminal event, tiny job (p99)",
                f"{percentile(samples, 99):.1f} ms",
                "target ≤ 30 ms",
            )
        )
        rows.append(stages_row(await stages(database_url, busy_jobs)))
        rate = await throughput(base, tokens, args.throughput_seconds, args.concurrency)
        rows.append(
            (
                "tiny calculations per second, whole path, WebSocket clients",
                f"{rate:.0f} /s",
                f"{args.concurrency} Python clients as {args.users} users, submitting and "
                "awaiting the event",
            )
        )
        flood, count, cpu_ms = await submit_throughput(
            base,
            tokens,
            database_url,
            args.throughput_seconds,
            args.concurrency,
            {"api": api.process.pid, "worker": worker.process.pid},
            Path(args.profile) if args.profile else None,
        )
        rows.append(
            (
                "tiny calculations per second, submit → stored result",
                f"{flood:.0f} /s",
                f"wrk, {args.concurrency} connections as {args.users} users, {count} jobs, "
                "1 API + 1 worker process, target ≥ 500",
            )
        )

        rows.append(
            (
                "CPU per tiny job: API / worker processes",
                f"{cpu_ms['api']:.2f} / {cpu_ms['worker']:.2f} ms",
                "during the wrk flood (user + system; the worker's children included)",
            )
        )
        rows.append(
            (
                "PostgreSQL transactions / Redis commands per tiny job",
                f"{cpu_ms['transactions']:.1f} / {cpu_ms['redis']:.1f}",
                "during the wrk flood (pg_stat_database; commands sent to the Redis server, "
                "pipelined ones each counted); PostgreSQL connections opened: "
                f"{cpu_ms['connections'] * 1000:.0f} per 1,000 jobs",
            )
        )

        if args.only == "jobs":
            print_table(rows)
            return

        me = {"query": "{ me { id email } }"}
        hello = {"query": "{ hello }"}
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                try:
                    await http.post(f"http://127.0.0.1:{bare_port}/", json=hello)
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)
        me_rates, hello_rates = [], []
        for _ in range(3):  # interleaved, medians
            me_rates.append(
                await asyncio.to_thread(
                    wrk, f"http://{base}/graphql", me, {"Authorization": f"Bearer {token}"}, 4
                )
            )
            hello_rates.append(
                await asyncio.to_thread(wrk, f"http://127.0.0.1:{bare_port}/", hello, {}, 4)
            )
        me_rate, hello_rate = statistics.median(me_rates), statistics.median(hello_rates)
        rows.append(
            (
                "authenticated { me { id email } } (wrk)",
                f"{me_rate:.0f} req/s",
                f"bare Strawberry {{ hello }} with caches: {hello_rate:.0f} req/s; "
                f"ratio {me_rate / hello_rate:.2f} (target ≥ 0.5)",
            )
        )
        bare_url = f"http://127.0.0.1:{bare_port}/"
        busy_floor = await client_floor(bare_url, 200, 0.0)
        idle_floor = await client_floor(bare_url, 40, args.idle_gap)
        rows.append(
            (
                "this client's own HTTP round trip (p50, busy / idle)",
                f"{busy_floor:.1f} / {idle_floor:.1f} ms",
                f"httpx to bare Strawberry {{ hello }}, back to back / {args.idle_gap} s apart: "
                "part of every submit above",
            )
        )
        hot = await asyncio.to_thread(page_touch_cost, 0.0)
        cold = await asyncio.to_thread(page_touch_cost, args.idle_gap)
        rows.append(
            (
                "a page of memory touched again (back to back / idle)",
                f"{hot:.2f} / {cold:.2f} µs",
                f"1,000 pages, then again at once / after {args.idle_gap} s asleep: what this "
                "machine charges a process that wakes up (each µs a page: 1 ms per 1,000 pages)",
            )
        )
        connections, per_subscription = await subscription_footprint(
            base, token, api, args.subscriptions
        )
        rows.append(
            (
                "Redis pub/sub connections of the API",
                str(connections),
                f"with {args.subscriptions} open subscriptions (target: 1)",
            )
        )
        rows.append(
            (
                "memory per open subscription",
                f"{per_subscription:.1f} KiB",
                "API process RSS growth / subscriptions (target ≤ 45 KiB)",
            )
        )
    finally:
        for process in (worker, api, bare):
            process.stop()
        await redis.flushdb()
        await redis.aclose()
        await drop_database(database_url)

    print_table(rows)


def print_table(rows: list[tuple[str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    load = os.getloadavg()
    print(
        f"\ncrunchql service benchmark — {time.strftime('%Y-%m-%d %H:%M')} — {os.cpu_count()} cores"
        f" — load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"{'measure'.ljust(width)} | {'value':>12} | note")
    print(f"{'-' * width}-|-{'-' * 12}-|-----")
    for name, value, note in rows:
        print(f"{name.ljust(width)} | {value:>12} | {note}")


if __name__ == "__main__":
    asyncio.run(main())
