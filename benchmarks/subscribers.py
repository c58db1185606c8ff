"""Terminal-event fan-out to many subscriptions on one API process, with and without
multiplexed execution and direct frames (schema.sharing), side by side in one run.

    taskset -c 1 python -m benchmarks.subscribers [--subscriptions 10000] [--connections 100]
                                                  [--calculations 4] [--rounds 3]
                                                  [--modes shared,direct]

Production path: PostgreSQL + Redis + one worker + one API process per mode (--modes,
the first is the "before"): ``unshared`` (``CRUNCHQL_SUBSCRIPTION_SHARING=false``: every
subscriber executes its event), ``shared`` (one execution per event per selection set,
Strawberry sends each subscriber's ``next``: ``CRUNCHQL_SUBSCRIPTION_DIRECT_FRAMES=false``)
and ``direct`` (the default: one execution and one serialised payload per event, each
subscriber's frame written by its own task without Strawberry's per-result work;
``deflate`` is that with WebSocket compression on, ``CRUNCHQL_WS_COMPRESSION=true``,
which the clients here accept when offered, as browsers do; ``unbatched`` is ``direct``
with each frame its own ASGI send and socket write, ``CRUNCHQL_WS_BATCHED_WRITES=false``,
where ``direct`` writes a socket's frames of one event loop turn at once). The API
processes are pinned to core 0 (``taskset -a -pc 0``); this load generator and the worker
to core 1, so the client does not compete with the server it measures. Each round opens
--subscriptions subscriptions over --connections WebSockets, spread evenly over
--calculations QUEUED calculations (no message yet), sends their messages together and
measures, per API:

- latency from the calculation's ``finishedAt`` to the client's receipt of its terminal
  event (p50 / p99 / max over all subscriptions; same machine, same clock);
- server CPU per delivery: the API's user + system CPU from the send to the last
  terminal event's receipt, divided by the events it delivered by then;
- server CPU per subscription to its ``complete``: the same CPU until the client has
  every subscription's ``complete`` (the server finishes and cleans up each subscription
  after the terminal frames of all), divided by the subscriptions;
- RSS per open subscription: the API's RSS growth while opening them / subscriptions.

Rounds alternate the APIs; the table gives the median of the rounds.
Needs PostgreSQL and Redis (TEST_DATABASE_URL / TEST_REDIS_URL as for the tests).
"""

from __future__ import annotations

import argparse
import asyncio
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import websockets
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from benchmarks.service import REDIS_URL, drop_database, fresh_database, percentile
from crunchql.db.models import Calculation
from crunchql.workers.broker import create_broker
from crunchql.workers.queues import DramatiqJobQueue
from tests.e2e.processes import (
    HttpGraphQL,
    ServiceProcess,
    service_env,
    start_api,
    start_worker,
    wait_healthy,
    wait_ready,
)

QUERY = "subscription($id: ID!) { calculationUpdates(id: $id) { status progress finishedAt } }"
TINY = {"samples": 1000, "seed": 1}
TERMINAL = (b"SUCCEEDED", b"FAILED", b"CANCELLED")
SERVER_CORE, CLIENT_CORE = 0, 1
# name -> (label, environment of its API process)
MODES: dict[str, tuple[str, dict[str, str]]] = {
    "unshared": (
        "one execution per subscriber",
        {"CRUNCHQL_SUBSCRIPTION_SHARING": "false", "CRUNCHQL_SUBSCRIPTION_DIRECT_FRAMES": "false"},
    ),
    "shared": (
        "shared execution, Strawberry sends",
        {"CRUNCHQL_SUBSCRIPTION_DIRECT_FRAMES": "false"},
    ),
    "deflate": (
        "direct send, permessage-deflate on",
        {"CRUNCHQL_WS_COMPRESSION": "true"},
    ),
    "unbatched": (
        "direct send, one ASGI send per frame",
        {"CRUNCHQL_WS_BATCHED_WRITES": "false"},
    ),
    "direct": ("shared execution and frame, one socket write per turn", {}),
}


@dataclass
class Round:
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_us_per_delivery: float
    cpu_us_per_subscription: float
    rss_kib_per_subscription: float
    # This load generator's CPU over the fan-out's wall time: near 1.0, it measures itself.
    client_cpu_share: float


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Connection:
    """One graphql-transport-ws socket carrying many subscriptions; reading stays cheap
    (no JSON decoding of non-terminal events) so the client keeps up."""

    def __init__(self) -> None:
        self.initial = 0
        self.deliveries = 0
        self.received: dict[str, float] = {}  # operation id -> receipt (epoch seconds)
        self.done = asyncio.Event()
        self.completes = 0
        self.completed = asyncio.Event()  # every subscription's `complete` arrived
        self.expected = 0
        self.first_error: str | None = None  # shown if the set-up does not finish

    async def open(self, base: str, token: str, ids: list[str], prefix: str) -> None:
        self.socket = await websockets.connect(
            f"ws://{base}/graphql", subprotocols=["graphql-transport-ws"], max_queue=None
        )
        init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}
        await self.socket.send(json.dumps(init))
        assert json.loads(await self.socket.recv())["type"] == "connection_ack"
        self.expected = len(ids)
        self.all_initial = asyncio.Event()
        self.reader = asyncio.create_task(self._read())
        for index, calculation_id in enumerate(ids):
            payload = {"query": QUERY, "variables": {"id": calculation_id}}
            message = {"id": f"{prefix}-{index}", "type": "subscribe", "payload": payload}
            await self.socket.send(json.dumps(message))

    async def _read(self) -> None:
        async for raw in self.socket:
            data = raw.encode() if isinstance(raw, str) else raw
            if b'"next"' not in data:
                if b'"complete"' in data:
                    self.completes += 1
                    if self.completes == self.expected:
                        self.completed.set()
                continue
            if b'"errors"' in data and self.first_error is None:
                self.first_error = data[:300].decode(errors="replace")
            if b"QUEUED" in data:
                self.initial += 1
                if self.initial == self.expected:
                    self.all_initial.set()
                continue
            self.deliveries += 1
            if any(status in data for status in TERMINAL):
                message = json.loads(data)
                self.received[message["id"]] = time.time()
                if len(self.received) == self.expected:
                    self.done.set()

    async def close(self) -> None:
        self.reader.cancel()
        await self.socket.close()


async def one_round(
    api: ServiceProcess,
    base: str,
    token: str,
    owner_id: uuid.UUID,
    sessions: async_sessionmaker,  # type: ignore[type-arg]
    args: argparse.Namespace,
) -> Round:
    pid = api.process.pid
    async with sessions() as session, session.begin():
        # Dated ahead: the worker's sweep re-sends QUEUED rows older than a minute while
        # the queue is empty (a lost message), and setting up 10,000 subscriptions takes
        # longer than that. Only this benchmark's own send may start them.
        ahead = datetime.now(UTC) + timedelta(hours=1)
        rows = [
            Calculation(owner_id=owner_id, kind="monteCarloPi", input=TINY, created_at=ahead)
            for _ in range(args.calculations)
        ]
        session.add_all(rows)
    ids = [str(row.id) for row in rows]
    per_connection = args.subscriptions // args.connections
    rss_before = rss_kib(pid)
    connections = [Connection() for _ in range(args.connections)]
    # One socket at a time, each waiting for its subscriptions' first event: every
    # subscription reads its row once, and 10,000 at once would exhaust the API's pool.
    for number, connection in enumerate(connections):
        spread = [ids[(number * per_connection + i) % len(ids)] for i in range(per_connection)]
        await connection.open(base, token, spread, f"c{number}")
        try:
            await asyncio.wait_for(connection.all_initial.wait(), args.setup_timeout)
        except TimeoutError:
            raise RuntimeError(
                f"socket {number}: {connection.initial} of {per_connection} subscriptions "
                f"started in {args.setup_timeout} s; first error: {connection.first_error}"
            ) from None
    rss_after = rss_kib(pid)
    profiler = None
    if args.profile:  # py-spy (pip install py-spy) samples the API during the fan-out
        suffix = "svg" if args.profile_format == "flamegraph" else "txt"
        out = Path(args.profile) / f"fanout-{pid}.{suffix}"
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        profiler = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "250",
                "--format",
                args.profile_format,
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(1.0)  # attached
    cpu_before = cpu_seconds(pid)
    wall_before, client_before = time.monotonic(), time.process_time()
    queue = DramatiqJobQueue(create_broker(REDIS_URL))
    for calculation_id in ids:
        queue.send(uuid.UUID(calculation_id))
    await asyncio.wait_for(asyncio.gather(*(c.done.wait() for c in connections)), 300)
    cpu_after = cpu_seconds(pid)
    client_share = (time.process_time() - client_before) / (time.monotonic() - wall_before)
    # The server finishes each subscription (its `complete`, the clean-up) after the
    # terminal frames: counted separately, per subscription, until the last `complete`.
    await asyncio.wait_for(asyncio.gather(*(c.completed.wait() for c in connections)), 300)
    cpu_completed = cpu_seconds(pid)
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        await asyncio.to_thread(profiler.wait, 60)
    queue.broker.close()
    async with sessions() as session:
        finished: dict[str, datetime] = {
            str(row.id): row.finished_at
            for row in (
                await session.execute(select(Calculation).where(Calculation.id.in_(rows_ids(ids))))
            ).scalars()
            if row.finished_at is not None
        }
    # Which calculation each operation watched, to subtract the right finishedAt.
    latencies = []
    for number, connection in enumerate(connections):
        for operation, received in connection.received.items():
            index = int(operation.rsplit("-", 1)[1])
            calculation_id = ids[(number * per_connection + index) % len(ids)]
            latencies.append((received - finished[calculation_id].timestamp()) * 1000)
    deliveries = sum(c.deliveries for c in connections)
    for connection in connections:
        await connection.close()
    total = per_connection * args.connections
    return Round(
        p50_ms=statistics.median(latencies),
        p99_ms=percentile(latencies, 99),
        max_ms=max(latencies),
        cpu_us_per_delivery=(cpu_after - cpu_before) / deliveries * 1e6,
        cpu_us_per_subscription=(cpu_completed - cpu_before)
        / (per_connection * args.connections)
        * 1e6,
        rss_kib_per_subscription=(rss_after - rss_before) / total,
        client_cpu_share=client_share,
    )


def rows_ids(ids: list[str]) -> list[uuid.UUID]:
    return [uuid.UUID(each) for each in ids]


def pin(pid: int, core: int) -> None:
    subprocess.run(["taskset", "-a", "-pc", str(core), str(pid)], check=True, capture_output=True)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--calculations", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--modes",
        default="shared,direct",
        help=f"comma-separated, first is 'before': {', '.join(MODES)}",
    )
    parser.add_argument("--profile", metavar="DIR", help="write py-spy flame graphs here")
    parser.add_argument(
        "--profile-format", default="flamegraph", choices=["flamegraph", "raw", "speedscope"]
    )
    parser.add_argument("--setup-timeout", type=float, default=120.0, help="per socket")
    args = parser.parse_args()

    database_url = await fresh_database()
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL)
    await redis.flushdb()
    log_dir = Path(tempfile.mkdtemp(prefix="crunchql-fanout-"))
    env = service_env(
        database_url,
        REDIS_URL,
        CRUNCHQL_LOG_LEVEL="WARNING",
        CRUNCHQL_METRICS="false",
        # One user holds every subscription here: lift the per-user and per-socket
        # abuse limits (defaults 10 sockets, 200 subscriptions, 300 operations/min).
        CRUNCHQL_WS_MAX_SOCKETS_PER_USER=str(args.connections * 2),
        # Generous: a slot whose release did not reach Redis holds for its 60 s lease.
        CRUNCHQL_WS_MAX_SUBSCRIPTIONS_PER_USER=str(args.subscriptions * 10),
        CRUNCHQL_WS_OPERATIONS_PER_MINUTE=str(args.subscriptions * 2),
        # One token for the whole run: several rounds of 10,000 subscriptions take
        # longer than the default 15 minutes (a third round failed set-up on it).
        CRUNCHQL_ACCESS_TOKEN_MINUTES="600",  # noqa: S106 (minutes, not a secret)
    )
    worker = start_worker(env, log_dir, threads=2)
    apis = {
        MODES[mode][0]: start_api({**env, **MODES[mode][1]}, log_dir)
        for mode in args.modes.split(",")
    }
    engine = create_async_engine(database_url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    results: dict[str, list[Round]] = {name: [] for name in apis}
    os.sched_setaffinity(0, {CLIENT_CORE})
    try:
        for api, base in apis.values():
            await wait_healthy(base, api)
            pin(api.process.pid, SERVER_CORE)
        await wait_ready(next(iter(apis.values()))[1], worker)
        pin(worker.process.pid, CLIENT_CORE)
        graphql = HttpGraphQL(next(iter(apis.values()))[1])
        token = await graphql.register()
        me = await graphql.execute("{ me { id } }")
        owner_id = uuid.UUID(me["data"]["me"]["id"])
        await graphql.close()
        failed = False
        for _ in range(args.rounds):
            if failed:
                break
            for name, (api, base) in apis.items():
                try:
                    result = await one_round(api, base, token, owner_id, sessions, args)
                except (RuntimeError, TimeoutError) as error:  # the rounds so far still count
                    print(f"round failed, {name}: {error}", flush=True)
                    failed = True
                    break
                results[name].append(result)
                print(f"round, {name}: {result}", flush=True)
                await asyncio.sleep(2)  # let the closed sockets' teardown finish
    finally:
        for process in (worker, *(api for api, _ in apis.values())):
            process.stop()
        await engine.dispose()
        await redis.flushdb()
        await redis.aclose()
        await drop_database(database_url)

    load = os.getloadavg()
    print(
        f"\ncrunchql subscription fan-out — {time.strftime('%Y-%m-%d %H:%M')} — "
        f"{os.cpu_count()} cores — load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"{args.subscriptions} subscriptions on {args.connections} WebSockets, "
        f"{args.calculations} calculations finishing together; API on core {SERVER_CORE}, "
        f"client and worker on core {CLIENT_CORE}; medians of "
        + ", ".join(f"{len(rounds)} rounds ({name})" for name, rounds in results.items())
    )
    header = (
        "API", "p50 ms", "p99 ms", "max ms", "CPU µs/delivery",
        "CPU µs/subscription to its complete", "KiB/subscription (1st round)"
    )  # fmt: skip
    print(" | ".join(header))
    medians = {}
    for name, rounds in results.items():
        if not rounds:
            continue
        row = Round(
            *(statistics.median(getattr(r, f) for r in rounds) for f in Round.__dataclass_fields__)
        )
        # Only a fresh process's first round grows its RSS: later ones reuse freed memory.
        row.rss_kib_per_subscription = rounds[0].rss_kib_per_subscription
        medians[name] = row
        print(
            f"{name} | {row.p50_ms:.0f} | {row.p99_ms:.0f} | {row.max_ms:.0f} | "
            f"{row.cpu_us_per_delivery:.0f} | {row.cpu_us_per_subscription:.0f} | "
            f"{row.rss_kib_per_subscription:.1f}"
        )
    rows = list(medians.values())
    before, after = rows[0], rows[-1]
    if len(rows) > 1:
        print(
            f"ratio before/after: p99 {before.p99_ms / after.p99_ms:.2f}x, "
            f"CPU per delivery {before.cpu_us_per_delivery / after.cpu_us_per_delivery:.2f}x"
        )
    for name, rounds in results.items():
        print(
            f"  rounds, {name}: "
            + "; ".join(
                f"p99 {r.p99_ms:.0f} ms, {r.cpu_us_per_delivery:.0f} µs, "
                f"client busy {r.client_cpu_share:.0%}"
                for r in rounds
            )
        )


if __name__ == "__main__":
    asyncio.run(main())
