"""The Celery application: Redis broker, no result backend (statuses live in PostgreSQL).

The API imports only this module to send tasks by name; the worker
(:mod:`benchmarks.classic.worker`) registers the task itself, with the numba kernel.
"""

from __future__ import annotations

import os

from celery import Celery

RUN_CALCULATION = "classic.run_calculation"


def redis_url() -> str:
    return os.environ.get("CLASSIC_REDIS_URL", "redis://127.0.0.1:6379/0")


app = Celery("classic", broker=redis_url(), include=["benchmarks.classic.worker"])
app.conf.update(
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
