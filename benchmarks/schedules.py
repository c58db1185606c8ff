"""Scheduler benchmark on the production path: PostgreSQL + Redis + a real
`crunchql scheduler` process firing every-minute schedules.

    python -m benchmarks.schedules [--schedules 1000] [--minutes 3] [--batch-size 100]
                                   [--lanes 4 | --lanes 1,4]

Prints one table per configuration (`--lanes 1,4`: one transaction at a time, then four
at once, side by side in the summary), one row per minute (each minute is one run:
every schedule fires at the same instant) and their median:
- fire lag p50 / p99 / max: calculation row created minus fire instant (the
  contract: within 1 s while a scheduler runs);
- scheduler CPU per fire (user + system time of the scheduler process over the whole
  window, sleeping included, divided by the fires);
- duplicate and missing fires: for every schedule, every minute of the window must
  have exactly one calculation.

The schedules belong to schedules/20 users (the ACTIVE limit); the active-calculation
limit is raised so that QUEUED calculations (no worker runs them: this measures the
scheduler alone, on 2 shared cores) are never skipped; its check still runs.
Needs PostgreSQL and Redis (TEST_DATABASE_URL / TEST_REDIS_URL as for the tests); the
Redis DB is flushed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import create_async_engine

from crunchql.core.settings import normalise_database_url
from crunchql.db.migrate import upgrade_async
from crunchql.db.models import Schedule, User
from tests.e2e.processes import CRUNCHQL, ServiceProcess, service_env

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PER_USER = 20
LEAD_IN_SECONDS = 25  # the first fire instant is at least this far from the start


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def seed(url: str, count: int, first: datetime) -> None:
    engine = create_async_engine(url)
    now = datetime.now(UTC)
    users = [
        {
            "id": uuid.uuid4(),
            "email": f"bench-{i}@example.com",
            "password_hash": "x",
            "role": "USER",
            "is_active": True,
            "created_at": now,
            "updated_at": now,
        }
        for i in range((count + PER_USER - 1) // PER_USER)
    ]
    schedules = [
        {
            "id": uuid.uuid4(),
            "owner_id": users[i // PER_USER]["id"],
            "name": f"bench {i}",
            "kind": "monteCarloPi",
            "input": {"samples": 1000, "seed": i},
            "cron": "* * * * *",
            "timezone": "UTC",
            "misfire_policy": "SKIP",
            "status": "ACTIVE",
            "next_fire_at": first,
            "skipped_runs": 0,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(count)
    ]
    async with engine.begin() as connection:
        await connection.execute(insert(User), users)
        await connection.execute(insert(Schedule), schedules)
    await engine.dispose()


async def leader_pid(url: str) -> int | None:
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        pid = (
            await connection.execute(
                text(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                    "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
                )
            )
        ).scalar_one_or_none()
    await engine.dispose()
    return int(pid.rsplit(":", 1)[1]) if pid else None


@dataclass
class Outcome:
    lanes: int
    p50s: list[float]
    p99s: list[float]
    cpu_per_fire: float
    duplicates: int
    missing: int


async def run(args: argparse.Namespace, lanes: int) -> Outcome:
    """One configuration: a fresh database, the schedules, a scheduler, --minutes."""
    admin_url = normalise_database_url(PG_URL)
    name = f"crunchql_bench_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    scheduler: ServiceProcess | None = None
    try:
        await upgrade_async(url)
        start = datetime.now(UTC) + timedelta(seconds=LEAD_IN_SECONDS)
        first = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
        await seed(url, args.schedules, first)
        env = service_env(
            url,
            REDIS_URL,
            CRUNCHQL_MAX_ACTIVE_CALCULATIONS="100000000",
            CRUNCHQL_RATE_LIMITS="on",
            CRUNCHQL_METRICS="false",
            CRUNCHQL_LOG_LEVEL="WARNING",
            CRUNCHQL_SCHEDULER_BATCH_SIZE=str(args.batch_size),
            CRUNCHQL_SCHEDULER_LANES=str(lanes),
        )
        scheduler = ServiceProcess(
            "scheduler", [*CRUNCHQL, "scheduler"], env, Path(tempfile.mkdtemp())
        )
        deadline = time.monotonic() + 60
        while await leader_pid(url) != scheduler.process.pid:
            if time.monotonic() > deadline:
                raise SystemExit(f"no leader:\n{scheduler.log()}")
            await asyncio.sleep(0.2)
        await asyncio.sleep(max(0.0, (first - datetime.now(UTC)).total_seconds() - 2))
        cpu_before = cpu_seconds(scheduler.process.pid)
        end = first + timedelta(minutes=args.minutes - 1, seconds=30)
        await asyncio.sleep(max(0.0, (end - datetime.now(UTC)).total_seconds()))
        cpu_used = cpu_seconds(scheduler.process.pid) - cpu_before

        engine = create_async_engine(url)
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    text(
                        "SELECT schedule_id, scheduled_for, created_at FROM calculations "
                        "WHERE schedule_id IS NOT NULL"
                    )
                )
            ).all()
            skipped = (
                await connection.execute(text("SELECT sum(skipped_runs) FROM schedules"))
            ).scalar_one()
        await engine.dispose()
    finally:
        if scheduler is not None:
            scheduler.kill(signal.SIGTERM)
            scheduler.stop()
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
        from redis.asyncio import Redis

        redis = Redis.from_url(REDIS_URL)
        await redis.flushdb()
        await redis.aclose()

    instants = [first + timedelta(minutes=m) for m in range(args.minutes)]
    seen = Counter((row[0], row[1]) for row in rows)
    ids = {row[0] for row in rows}
    expected = {(sid, at) for sid in ids for at in instants}
    missing = len(expected - set(seen)) + (args.schedules - len(ids)) * args.minutes
    duplicates = sum(n - 1 for n in seen.values())
    print(f"\n{lanes} lane(s): one row per minute, every schedule due at that instant")
    print(f"{'minute (UTC)':<14} | {'fires':>6} | {'lag p50':>8} | {'lag p99':>8} | {'max':>8}")
    print(f"{'-' * 14}-|-{'-' * 6}-|-{'-' * 8}-|-{'-' * 8}-|-{'-' * 8}")
    p50s, p99s = [], []
    for at in instants:
        lags = [(row[2] - row[1]).total_seconds() for row in rows if row[1] == at]
        if not lags:
            print(f"{at:%H:%M:%S}       | {0:>6} | {'-':>8} | {'-':>8} | {'-':>8}")
            continue
        p50, p99 = percentile(lags, 0.5), percentile(lags, 0.99)
        p50s.append(p50)
        p99s.append(p99)
        print(
            f"{at:%H:%M:%S}       | {len(lags):>6} | {p50 * 1000:>6.0f}ms | "
            f"{p99 * 1000:>6.0f}ms | {max(lags) * 1000:>6.0f}ms"
        )
    fires = sum(1 for row in rows if row[1] in set(instants))
    print(f"duplicate fires: {duplicates}   missing: {missing}   skipped: {skipped or 0}")
    return Outcome(lanes, p50s, p99s, cpu_used / max(fires, 1), duplicates, missing)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--minutes", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lanes", default="4", help="comma-separated, e.g. 1,4")
    args = parser.parse_args()
    print(
        f"crunchql scheduler benchmark — {datetime.now(UTC):%Y-%m-%d %H:%M} — "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} — "
        f"{args.schedules} every-minute schedules, batch {args.batch_size}"
    )
    outcomes = [await run(args, int(lanes)) for lanes in args.lanes.split(",")]
    base = outcomes[0]
    print("\nsummary (medians over the minutes; ratio to the first configuration)")
    print(
        f"{'lanes':>5} | {'lag p50':>8} | {'lag p99':>8} | {'p99/1 s':>7} | {'ratio':>6} | CPU/fire"
    )
    print(f"{'-' * 5}-|-{'-' * 8}-|-{'-' * 8}-|-{'-' * 7}-|-{'-' * 6}-|---------")
    for outcome in outcomes:
        p50 = statistics.median(outcome.p50s) if outcome.p50s else float("nan")
        p99 = statistics.median(outcome.p99s) if outcome.p99s else float("nan")
        ratio = p99 / statistics.median(base.p99s) if base.p99s else float("nan")
        print(
            f"{outcome.lanes:>5} | {p50 * 1000:>6.0f}ms | {p99 * 1000:>6.0f}ms | "
            f"{p99:>6.2f}x | {ratio:>5.2f}x | {outcome.cpu_per_fire * 1000:.2f} ms"
        )
    if any(outcome.duplicates or outcome.missing for outcome in outcomes):
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
