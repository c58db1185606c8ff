"""/healthz: the process answers. /readyz: it can serve (database, Redis, a live worker)."""

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


async def readiness(runtime: Runtime) -> tuple[bool, dict[str, Any]]:
    settings = runtime.settings

    async def database() -> dict[str, Any]:
        async with unit_of_work(runtime.services.session_factory) as session:
            await session.execute(text("SELECT 1"))
        return {}

    async def redis() -> dict[str, Any]:
        assert runtime.redis is not None
        await runtime.redis.ping()
        return {}

    async def workers() -> dict[str, Any]:
        async with unit_of_work(runtime.services.session_factory) as session:
            alive = await WorkerRepository(session).count_alive(
                datetime.now(UTC), timedelta(seconds=settings.worker_stale_seconds)
            )
        if alive == 0:
            raise LookupError("no worker heard from recently")
        return {"alive": alive}

    checks: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {"database": database}
    if runtime.redis is not None:
        checks["redis"] = redis
        checks["workers"] = workers
    results = await asyncio.gather(*(_timed(check) for check in checks.values()))
    report = dict(zip(checks, results, strict=True))
    if runtime.redis is None:
        report["workers"] = {"ok": True, "embedded": True}
    return all(item["ok"] for item in report.values()), report


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
    (ready, report), scheduler = await asyncio.gather(
        readiness(runtime), scheduler_leadership(runtime)
    )
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": report, "scheduler": scheduler},
        status_code=200 if ready else 503,
    )
