"""The Celery task: claim the row (RUNNING), run crunchql's numba monteCarloPi kernel,
store SUCCEEDED (or FAILED) with the result, publishing each status on Redis.

    celery -A benchmarks.classic.celery_app worker --pool prefork --concurrency 1

Database and Redis clients are made lazily in the process that runs tasks (a prefork
child), never inherited across ``fork``.
"""

from __future__ import annotations

import functools
import json
import uuid
from typing import Any

from celery.signals import worker_process_init  # celery ships no type hints
from redis import Redis
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from benchmarks.classic.celery_app import RUN_CALCULATION, app, redis_url
from benchmarks.classic.db import Calculation, sync_engine, utcnow
from crunchql.compute import monte_carlo_pi


@functools.cache
def engine() -> Engine:
    return sync_engine()


@functools.cache
def redis() -> Redis:
    return Redis.from_url(redis_url())


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _warm(**_: Any) -> None:
    """Load the kernels from numba's cache (or compile them) before the first task."""
    monte_carlo_pi.warm_up()


def channel(calculation_id: uuid.UUID | str) -> str:
    return f"calculation:{calculation_id}"


def publish(calculation_id: uuid.UUID, status: str, **fields: Any) -> None:
    message = {"id": str(calculation_id), "status": status, **fields}
    redis().publish(channel(calculation_id), json.dumps(message))


@app.task(name=RUN_CALCULATION)  # type: ignore[untyped-decorator]
def run_calculation(calculation_id: str) -> None:
    key = uuid.UUID(calculation_id)
    with Session(engine()) as session, session.begin():
        # A conditional claim: a redelivered task finds the row taken and does nothing.
        params = session.execute(
            update(Calculation)
            .where(Calculation.id == key, Calculation.status == "QUEUED")
            .values(status="RUNNING", started_at=utcnow())
            .returning(Calculation.input)
        ).scalar_one_or_none()
    if params is None:
        return
    publish(key, "RUNNING")
    try:
        result = monte_carlo_pi.estimate_pi(int(params["samples"]), int(params["seed"]))
    except Exception as error:
        with Session(engine()) as session, session.begin():
            session.execute(
                update(Calculation)
                .where(Calculation.id == key)
                .values(status="FAILED", error=str(error), finished_at=utcnow())
            )
        publish(key, "FAILED", error=str(error))
        raise
    with Session(engine()) as session, session.begin():
        session.execute(
            update(Calculation)
            .where(Calculation.id == key)
            .values(status="SUCCEEDED", result=result, finished_at=utcnow())
        )
    publish(key, "SUCCEEDED", result=result)
