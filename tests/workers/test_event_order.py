"""The RUNNING event goes out while the kernel starts (one Redis round trip off the path
to the result); the calculation's next event still never overtakes it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

from crunchql.core.lifecycle import CalculationEvent, EventKind
from crunchql.db.models import Calculation, CalculationStatus
from crunchql.workers import runner


class SlowFirstBus:
    """Holds the first publish until released; records what went out, in order."""

    def __init__(self) -> None:
        self.sent: list[CalculationEvent] = []
        self.release = asyncio.Event()
        self.first_started = asyncio.Event()

    async def publish(self, event: CalculationEvent) -> None:
        if not self.first_started.is_set():
            self.first_started.set()
            await self.release.wait()
        self.sent.append(event)


def running_row() -> Calculation:
    now = datetime.now(UTC)
    return Calculation(
        id=uuid.uuid4(), owner_id=uuid.uuid4(), kind="monteCarloPi", input={},
        status=CalculationStatus.RUNNING, progress=0.0, created_at=now, started_at=now,
        attempts=1, version=1, shards=1, shards_done=0,
    )  # fmt: skip


async def test_the_next_event_waits_for_the_running_announcement() -> None:
    bus = SlowFirstBus()
    services = SimpleNamespace(bus=bus)
    row = running_row()
    runner._announce_meanwhile(services, row)  # type: ignore[arg-type]
    await asyncio.wait_for(bus.first_started.wait(), 5)  # RUNNING is on its way, held
    tick = CalculationEvent.progress_tick(
        row.id, attempt=1, version=2, progress=0.5, partial_result=None, owner_id=row.owner_id
    )
    later = asyncio.create_task(runner._publish(services, tick))  # type: ignore[arg-type]
    # The tick waits behind the held announcement...
    done, _ = await asyncio.wait([later], timeout=0.2)
    assert not done and bus.sent == []
    # ...and follows it once it went out.
    bus.release.set()
    await asyncio.wait_for(later, 5)
    assert [(e.kind, e.version) for e in bus.sent] == [
        (EventKind.STATUS, 1),
        (EventKind.PROGRESS, 2),
    ]
    assert row.id not in runner._in_flight  # nothing kept once sent


async def test_another_calculation_s_events_do_not_wait() -> None:
    bus = SlowFirstBus()
    services = SimpleNamespace(bus=bus)
    held = running_row()
    runner._announce_meanwhile(services, held)  # type: ignore[arg-type]
    await asyncio.wait_for(bus.first_started.wait(), 5)
    other = running_row()
    await asyncio.wait_for(runner._announce(services, other), 5)  # type: ignore[arg-type]
    assert [e.id for e in bus.sent] == [other.id]
    bus.release.set()
    await asyncio.wait_for(asyncio.shield(runner._in_flight[held.id]), 5)
