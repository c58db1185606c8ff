"""``Calculation.shards``, ``shardsDone`` and ``device`` as the schema shows a row."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

from crunchql.core.lifecycle import CalculationSnapshot, CalculationStatus
from crunchql.schema.types import Calculation

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
QUEUED = CalculationSnapshot(
    id=uuid.uuid4(), owner_id=uuid.uuid4(), kind="monteCarloPi", input={"samples": 10},
    status=CalculationStatus.QUEUED, progress=0.0, version=0, attempts=0, created_at=NOW,
)  # fmt: skip


def shown(**changes: object) -> Calculation:
    return Calculation.from_model(dataclasses.replace(QUEUED, **changes))  # type: ignore[arg-type]


def test_device_is_null_while_queued_and_cpu_once_a_worker_ran_it() -> None:
    assert shown().device is None and (shown().shards, shown().shards_done) == (1, 0)
    running = shown(status=CalculationStatus.RUNNING, started_at=NOW, attempts=1)
    assert running.device == "cpu"
    # Handed back to the queue after starting: null again, as the contract says.
    assert shown(status=CalculationStatus.QUEUED, started_at=NOW, device="cpu").device is None
    # Cancelled before any worker took it: it never ran anywhere.
    assert shown(status=CalculationStatus.CANCELLED, finished_at=NOW).device is None


def test_a_split_calculation_shows_its_shards() -> None:
    split = shown(status=CalculationStatus.RUNNING, started_at=NOW, shards=8, shards_done=3,
                  device="cpu")  # fmt: skip
    assert (split.shards, split.shards_done, split.device) == (8, 3, "cpu")
