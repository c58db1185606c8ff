"""Fire what is due: one small transaction per batch of due schedules.

Each transaction locks the owners (the active-calculation count must not change
under it, as in submitCalculation), advances the schedules it read with a conditional
UPDATE (a schedule paused, deleted or fired by someone else meanwhile is left alone),
then writes the fire records and the QUEUED calculations. The ``calculation.run``
messages go out after commit, through the same job queue as a submission; a message
lost there is re-sent by the workers' lost-message sweep like any other.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crunchql.core.lifecycle import CalculationEvent, CalculationStatus, EventKind
from crunchql.db.engine import after_commit, unit_of_work
from crunchql.db.repositories.schedule import Claim, ScheduleRepository
from crunchql.services.container import JobQueue, Limits, Work
from crunchql.services.recurrence import CronError, FirePlan, MisfirePolicy, plan_fire
from crunchql.services.schedules import recurrence_of

logger = logging.getLogger("crunchql.scheduler")

Fence = Callable[[AsyncSession], Awaitable[None]]
# Tells the owner's list views (myCalculationUpdates) about a calculation a fire created.
Announce = Callable[[CalculationEvent], Awaitable[None]]


def created_event(calculation_id: uuid.UUID, owner_id: uuid.UUID) -> CalculationEvent:
    """The "created" event of a QUEUED calculation, as a submission publishes it."""
    return CalculationEvent(
        id=calculation_id,
        kind=EventKind.STATUS,
        status=CalculationStatus.QUEUED,
        attempt=0,
        version=0,
        progress=0.0,
        owner_id=owner_id,
    )


class FireOutcome(StrEnum):
    CREATED = "CREATED"
    SKIPPED_LIMIT = "SKIPPED_LIMIT"  # the owner is at the active-calculation limit
    SKIPPED_DISABLED = "SKIPPED_DISABLED"  # the owner's account is disabled


@dataclass(frozen=True)
class FireConfig:
    limits: Limits
    grace: timedelta = timedelta(seconds=30)
    batch_size: int = 100


@dataclass
class FireReport:
    """What one pass did; the scheduler turns it into metrics and logs."""

    outcomes: dict[FireOutcome, int] = field(default_factory=dict)
    misfires: dict[MisfirePolicy, int] = field(default_factory=dict)
    lags: list[float] = field(default_factory=list)  # seconds, on-time fires only
    processed: int = 0

    def count(self, outcome: FireOutcome) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


@dataclass(frozen=True)
class _Decision:
    schedule: Any  # a row of schedules (list_due)
    plan: FirePlan


def _plan(schedule: Any, now: datetime, config: FireConfig) -> FirePlan:
    assert schedule.next_fire_at is not None
    try:
        return plan_fire(
            recurrence_of(schedule, config.limits),
            schedule.next_fire_at,
            now,
            policy=MisfirePolicy(schedule.misfire_policy),
            grace=config.grace,
        )
    except (CronError, ValueError) as error:
        # Stored by an earlier version or another configuration (a seconds field):
        # finish it rather than retry it forever.
        logger.warning("schedule %s cannot be evaluated (%s); finishing it", schedule.id, error)
        return FirePlan(fire_at=None, missed=0, next_fire_at=None, late=True)


async def fire_batch(
    session_factory: async_sessionmaker[AsyncSession],
    queue: JobQueue,
    config: FireConfig,
    now: datetime,
    *,
    fence: Fence | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    announce: Announce | None = None,
) -> FireReport:
    """Act on up to ``batch_size`` schedules due at ``now``; ``processed`` says how many
    (a full batch means there may be more)."""
    report = FireReport()
    claimed: set[uuid.UUID] = set()
    async with unit_of_work(session_factory) as session:
        if fence is not None:
            await fence(session)  # still the leader, checked inside this transaction
        repo = ScheduleRepository(session)
        due = await repo.list_due(now, config.batch_size)
        if not due:
            return report
        decisions = [_Decision(schedule, _plan(schedule, now, config)) for schedule in due]
        owners = await repo.lock_owners(d.schedule.owner_id for d in decisions)
        firing = [d for d in decisions if d.plan.fire_at is not None]
        active = await repo.count_active_calculations(d.schedule.owner_id for d in firing)
        outcomes: dict[uuid.UUID, FireOutcome] = {}
        for decision in firing:
            owner = decision.schedule.owner_id
            if not owners.get(owner, False):
                outcomes[decision.schedule.id] = FireOutcome.SKIPPED_DISABLED
            elif 0 < config.limits.max_active_calculations <= active.get(owner, 0):
                # As in submitCalculation: a cap, not a rate limit (CRUNCHQL_RATE_LIMITS
                # does not turn it off).
                outcomes[decision.schedule.id] = FireOutcome.SKIPPED_LIMIT
            else:
                outcomes[decision.schedule.id] = FireOutcome.CREATED
                active[owner] = active.get(owner, 0) + 1
        claimed = await repo.claim(
            [
                Claim(
                    schedule_id=d.schedule.id,
                    due=d.schedule.next_fire_at,
                    next_fire_at=d.plan.next_fire_at,
                    skipped=int(outcomes.get(d.schedule.id) is FireOutcome.SKIPPED_LIMIT),
                )
                for d in decisions
            ]
        )
        created_at = clock()
        fires: list[dict[str, Any]] = []
        calculations: list[dict[str, Any]] = []
        for decision in decisions:
            schedule, plan = decision.schedule, decision.plan
            if schedule.id not in claimed:
                continue
            report.processed += 1
            if plan.missed:
                policy = MisfirePolicy(schedule.misfire_policy)
                report.misfires[policy] = report.misfires.get(policy, 0) + plan.missed
            if plan.fire_at is None:
                continue
            outcome = outcomes[schedule.id]
            report.count(outcome)
            calculation_id = uuid.uuid4() if outcome is FireOutcome.CREATED else None
            fires.append(
                {
                    "schedule_id": schedule.id,
                    "fire_at": plan.fire_at,
                    "outcome": outcome.value,
                    "calculation_id": calculation_id,
                    "created_at": created_at,
                }
            )
            if calculation_id is None:
                continue
            calculations.append(
                {
                    "id": calculation_id,
                    "owner_id": schedule.owner_id,
                    "kind": schedule.kind,
                    "input": schedule.input,
                    "created_at": created_at,
                    "schedule_id": schedule.id,
                    "scheduled_for": plan.fire_at,
                }
            )
            if not plan.late:
                report.lags.append((created_at - plan.fire_at).total_seconds())
        # Calculations first: a fire record points at its calculation.
        await repo.insert_calculations(calculations)
        await repo.insert_fires(fires)
        ids = [
            (row["id"], row["owner_id"], Work(row["kind"], row["input"])) for row in calculations
        ]

        async def send() -> None:
            for calculation_id, owner_id, work in ids:
                if announce is not None:
                    await announce(created_event(calculation_id, owner_id))
                await queue.enqueue(calculation_id, work)

        if ids:
            after_commit(session, send)
    if len(claimed) < len(due):
        logger.info("%d due schedules changed meanwhile; left alone", len(due) - len(claimed))
    return report
