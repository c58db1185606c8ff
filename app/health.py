"""/healthz: the process answers. /readyz: this process can serve its requests.

Readiness covers only what an API process needs to answer: the database, and Redis
when one is configured (rate limits, the job queue, the event bus). Whether a worker is
alive is reported in the body (and as ``crunchql_workers_alive``), never as a failed
readiness: with every worker gone, users must still be able to log in, read their
results and queue new calculations, which wait in Redis until a worker returns. Taking
every API pod out of its Service because the workers are away would turn a slow queue
into an outage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse

from crunchql.db.engine import read_only, unit_of_work
from crunchql.db.repositories import WorkerRepository
from crunchql.db.repositories.schedule import ScheduleRepository
from crunchql.observability.metrics import record_workers_alive
from crunchql.runtime import Runtime

CHECK_TIMEOUT_SECONDS = 2.0


async def healthz(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def _timed(check: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
        state = {"ok": True, **detail}
    except Exception as error:
        # The error class only: a DSN or host name in the message stays in the logs.
        state = {"ok": False, "error": type(error).__name__}
    state["latencyMs"] = round((time.perf_counter() - started) * 1000, 2)
    return state


async def _workers(runtime: Runtime) -> dict[str, Any]:
    """Worker presence, for the body: ``alive`` is the number of worker processes with
    a fresh heartbeat, ``null`` when it could not be counted (the database check says
    why). The embedded mode runs calculations in this process."""
    if runtime.redis is None:
        return {"embedded": True, "alive": None}
    stale = timedelta(seconds=runtime.settings.worker_stale_seconds)

    async def count() -> tuple[int, int]:
        async with unit_of_work(runtime.services.session_factory) as session:
            repo = WorkerRepository(session)
            now = datetime.now(UTC)
            return await repo.count_alive(now, stale), await repo.count_alive(
                now, stale, device="gpu"
            )

    try:
        alive, gpu = await asyncio.wait_for(count(), CHECK_TIMEOUT_SECONDS)
    except Exception as error:
        return {"embedded": False, "alive": None, "error": type(error).__name__}
    record_workers_alive(alive)
    # gpu: how many of them are `crunchql worker --device gpu` (they take calculations.gpu).
    return {"embedded": False, "alive": alive, "gpu": gpu}


async def readiness(runtime: Runtime) -> tuple[bool, dict[str, Any], dict[str, Any]]:
    """(ready, checks, workers): ready when every check passed; ``workers`` is
    information only."""

    async def database() -> dict[str, Any]:
        async with unit_of_work(runtime.services.session_factory) as session:
            await session.execute(text("SELECT 1"))
        return {}

    async def redis() -> dict[str, Any]:
        assert runtime.redis is not None
        await runtime.redis.ping()
        return {}

    checks: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {"database": database}
    if runtime.redis is not None:
        checks["redis"] = redis
    *results, workers = await asyncio.gather(
        *(_timed(check) for check in checks.values()), _workers(runtime)
    )
    report = dict(zip(checks, results, strict=True))
    return all(item["ok"] for item in report.values()), report, workers


async def scheduler_leadership(runtime: Runtime) -> dict[str, Any]:
    """Who leads the schedulers (informative: the API serves without one). In embedded
    mode this process; on PostgreSQL whoever holds the leader lock."""
    if runtime.scheduler is not None and runtime.settings.is_sqlite:
        return runtime.scheduler.status()
    try:
        async with read_only(runtime.services.session_factory) as session:
            found = await asyncio.wait_for(
                ScheduleRepository(session).leader(), CHECK_TIMEOUT_SECONDS
            )
    except Exception as error:
        return {"leader": None, "error": type(error).__name__}
    return found or {"leader": None}


async def readyz(request: Request) -> JSONResponse:
    runtime = request.app.state.runtime
    (ready, report, workers), scheduler = await asyncio.gather(
        readiness(runtime), scheduler_leadership(runtime)
    )
    body = {"status": "ready" if ready else "unavailable", "checks": report}
    return JSONResponse(
        {**body, "workers": workers, "scheduler": scheduler},
        status_code=200 if ready else 503,
    )
