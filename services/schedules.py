"""Use cases around schedules: create, read, list, pause, resume, delete, and the
previews (``nextRuns``) that show exactly what the scheduler will fire."""

from __future__ import annotations

import asyncio
import base64
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from crunchql.compute.base import ParameterError
from crunchql.compute.catalog import KINDS
from crunchql.core.errors import BadUserInputError, ConflictError, NotFoundError, RateLimitedError
from crunchql.core.keyed_locks import KeyedLocks
from crunchql.db.engine import after_commit, read_only, unit_of_work
from crunchql.db.models import Calculation, Role, Schedule, ScheduleStatus, User
from crunchql.db.repositories import UserRepository
from crunchql.db.repositories.schedule import SchedulePage, ScheduleRepository
from crunchql.services.calculations import MAX_PAGE_SIZE, decode_cursor, parse_id
from crunchql.services.container import Limits, ServiceContainer
from crunchql.services.recurrence import (
    CronError,
    MisfirePolicy,
    Recurrence,
    normalise_cron,
    zone,
)

MAX_NAME_LENGTH = 200
MAX_NEXT_RUNS = 100


@dataclass(frozen=True)
class ScheduleRequest:
    """``ScheduleInput`` as plain values."""

    kind: str
    raw_input: Mapping[str, Any]
    cron: str | None
    run_at: datetime | None
    timezone: str
    starts_at: datetime | None
    ends_at: datetime | None
    misfire_policy: MisfirePolicy
    name: str | None


class ScheduleChanges:
    """In-process wake-ups for a scheduler running in this process (embedded mode);
    other processes hear PostgreSQL's NOTIFY instead."""

    def __init__(self) -> None:
        self._events: weakref.WeakSet[asyncio.Event] = weakref.WeakSet()

    def listen(self, event: asyncio.Event) -> None:
        self._events.add(event)

    def forget(self, event: asyncio.Event) -> None:
        self._events.discard(event)

    def notify(self) -> None:
        for event in list(self._events):
            event.set()


changes = ScheduleChanges()


async def _announce() -> None:
    changes.notify()


_owner_lock = KeyedLocks()


def recurrence_of(schedule: Any, limits: Limits) -> Recurrence:
    """The recurrence of a schedule (a model or a row of the schedules table)."""
    return Recurrence(
        cron=schedule.cron,
        run_at=schedule.run_at,
        timezone=schedule.timezone,
        starts_at=schedule.starts_at,
        ends_at=schedule.ends_at,
        seconds_field=limits.cron_seconds_field,
    )


def can_see(user: User, schedule: Schedule) -> bool:
    return schedule.owner_id == user.id or user.role == Role.ADMIN.value


def _aware(value: datetime | None, field: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise BadUserInputError(
            f"{field} needs a UTC offset, e.g. 2026-12-01T09:00:00Z.", field=field
        )
    return value.astimezone(UTC) if value is not None else None


def _validated(request: ScheduleRequest, limits: Limits, now: datetime) -> dict[str, Any]:
    """The columns of a new schedule, or BAD_USER_INPUT naming the field."""
    if (request.cron is None) == (request.run_at is None):
        raise BadUserInputError("Set exactly one of cron and runAt.", field="cron")
    if request.name is not None and len(request.name) > MAX_NAME_LENGTH:
        raise BadUserInputError(f"name is at most {MAX_NAME_LENGTH} characters.", field="name")
    try:
        zone(request.timezone)
    except ValueError as error:
        raise BadUserInputError(str(error), field="timezone") from None
    cron = None
    if request.cron is not None:
        try:
            normalise_cron(request.cron, seconds_field=limits.cron_seconds_field)
        except CronError as error:
            raise BadUserInputError(str(error), field="cron") from None
        cron = request.cron.strip()
    run_at = _aware(request.run_at, "runAt")
    starts_at = _aware(request.starts_at, "startsAt")
    ends_at = _aware(request.ends_at, "endsAt")
    if run_at is not None and run_at <= now:
        raise BadUserInputError("runAt is in the past.", field="runAt")
    if starts_at is not None and ends_at is not None and ends_at <= starts_at:
        raise BadUserInputError("endsAt must be after startsAt.", field="endsAt")
    if ends_at is not None and ends_at <= now:
        raise BadUserInputError("endsAt is in the past.", field="endsAt")
    kind = KINDS.get(request.kind)
    if kind is None:
        raise BadUserInputError(f"Unknown calculation kind {request.kind!r}.", field="calculation")
    try:
        params = kind.validate(request.raw_input)
    except ParameterError as error:
        raise BadUserInputError(
            error.message, field=f"calculation.{request.kind}.{error.field}"
        ) from None
    recurrence = Recurrence(
        cron=cron,
        run_at=run_at,
        timezone=request.timezone,
        starts_at=starts_at,
        ends_at=ends_at,
        seconds_field=limits.cron_seconds_field,
    )
    try:
        first = recurrence.next_after(now)
    except CronError as error:
        raise BadUserInputError(str(error), field="cron") from None
    if first is None:
        field = "runAt" if run_at is not None else "cron"
        raise BadUserInputError(
            "The schedule would never fire between startsAt and endsAt.", field=field
        )
    return {
        "name": request.name,
        "kind": kind.name,
        "input": params,
        "cron": cron,
        "run_at": run_at,
        "timezone": request.timezone,
        "starts_at": starts_at,
        "ends_at": ends_at,
        "misfire_policy": request.misfire_policy.value,
        "next_fire_at": first,
    }


async def _check_active_limit(
    repo: ScheduleRepository, owner_id: uuid.UUID, limits: Limits
) -> None:
    active = await repo.count_active(owner_id)
    if active >= limits.max_active_schedules:
        raise RateLimitedError(
            f"You have {active} active schedules; the limit is {limits.max_active_schedules}. "
            "Pause or delete one first."
        )


async def create(services: ServiceContainer, user: User, request: ScheduleRequest) -> Schedule:
    now = datetime.now(UTC)
    columns = _validated(request, services.limits, now)
    # Count and insert under the owner's lock (row lock on PostgreSQL, in-process lock
    # for SQLite), so parallel creates cannot all pass the count.
    async with _owner_lock(user.id), unit_of_work(services.session_factory) as session:
        await UserRepository(session).lock(user.id)
        repo = ScheduleRepository(session)
        await _check_active_limit(repo, user.id, services.limits)
        schedule = await repo.add(
            Schedule(
                id=uuid.uuid4(),
                owner_id=user.id,
                status=ScheduleStatus.ACTIVE,
                skipped_runs=0,
                created_at=now,
                updated_at=now,
                **columns,
            )
        )
        await repo.notify_changed()
        after_commit(session, _announce)
    return schedule


async def get_visible(services: ServiceContainer, user: User, raw_id: str) -> Schedule | None:
    schedule_id = parse_id(raw_id)
    if schedule_id is None:
        return None
    async with read_only(services.session_factory) as session:
        schedule = await ScheduleRepository(session).get(schedule_id)
    if schedule is None or not can_see(user, schedule):
        return None
    return schedule


async def list_own(
    services: ServiceContainer,
    user: User,
    *,
    first: int,
    after: str | None,
    status: ScheduleStatus | None,
) -> SchedulePage:
    _check_page(first)
    position = decode_cursor(after) if after else None
    async with read_only(services.session_factory) as session:
        return await ScheduleRepository(session).list_for_owner(
            user.id, first=first, after=position, status=status
        )


def encode_cursor(schedule: Schedule) -> str:
    """The same keyset cursor as calculations: (created_at, id)."""
    raw = f"{schedule.created_at.isoformat()}|{schedule.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _check_page(first: int) -> None:
    if not 0 <= first <= MAX_PAGE_SIZE:
        raise BadUserInputError(
            f"first must be between 0 and {MAX_PAGE_SIZE} (got {first}).", field="first"
        )


async def list_runs(
    services: ServiceContainer, schedule: Schedule, *, first: int, after: str | None
) -> tuple[list[Calculation], bool]:
    """The runs of a schedule the caller already sees."""
    _check_page(first)
    position = decode_cursor(after) if after else None
    async with read_only(services.session_factory) as session:
        return await ScheduleRepository(session).list_runs(schedule.id, first=first, after=position)


def next_runs(schedule: Schedule, limits: Limits, count: int) -> list[datetime]:
    """The coming fire instants: exactly what the scheduler will fire (from the stored
    next instant on), none while PAUSED or FINISHED."""
    if not 0 <= count <= MAX_NEXT_RUNS:
        raise BadUserInputError(
            f"count must be between 0 and {MAX_NEXT_RUNS} (got {count}).", field="count"
        )
    due = schedule.next_fire_at
    if schedule.status != ScheduleStatus.ACTIVE or due is None or count == 0:
        return []
    return [due, *recurrence_of(schedule, limits).upcoming(due, count - 1)]


async def pause(services: ServiceContainer, user: User, raw_id: str) -> Schedule:
    schedule_id = parse_id(raw_id)
    async with unit_of_work(services.session_factory) as session:
        repo = ScheduleRepository(session)
        schedule = await _owned(repo, user, schedule_id)
        if schedule.status == ScheduleStatus.FINISHED:
            raise ConflictError("The schedule is FINISHED; it cannot be paused.")
        if schedule.status == ScheduleStatus.ACTIVE:
            schedule.status = ScheduleStatus.PAUSED
            schedule.next_fire_at = None
            schedule.updated_at = datetime.now(UTC)
            await session.flush()
            await repo.notify_changed()
            after_commit(session, _announce)
    return schedule


async def resume(services: ServiceContainer, user: User, raw_id: str) -> Schedule:
    """Fires resume from the next instant after now: nothing missed while paused runs."""
    schedule_id = parse_id(raw_id)
    async with read_only(services.session_factory) as session:
        found = await _owned(ScheduleRepository(session), user, schedule_id, for_update=False)
    owner_id = found.owner_id
    async with _owner_lock(owner_id), unit_of_work(services.session_factory) as session:
        repo = ScheduleRepository(session)
        # The owner's row first (the ACTIVE count), then the schedule's: the order every
        # writer takes.
        await UserRepository(session).lock(owner_id)
        schedule = await _owned(repo, user, schedule_id)
        if schedule.status == ScheduleStatus.FINISHED:
            raise ConflictError("The schedule is FINISHED; it cannot be resumed.")
        if schedule.status == ScheduleStatus.PAUSED:
            await _check_active_limit(repo, owner_id, services.limits)
            now = datetime.now(UTC)
            following = recurrence_of(schedule, services.limits).next_after(now)
            schedule.status = ScheduleStatus.ACTIVE if following else ScheduleStatus.FINISHED
            schedule.next_fire_at = following
            schedule.updated_at = now
            await session.flush()
            await repo.notify_changed()
            after_commit(session, _announce)
    return schedule


async def delete(services: ServiceContainer, user: User, raw_id: str) -> bool:
    schedule_id = parse_id(raw_id)
    async with unit_of_work(services.session_factory) as session:
        repo = ScheduleRepository(session)
        schedule = await _owned(repo, user, schedule_id)
        await repo.delete(schedule.id)
        await repo.notify_changed()
        after_commit(session, _announce)
    return True


async def _owned(
    repo: ScheduleRepository,
    user: User,
    schedule_id: uuid.UUID | None,
    *,
    for_update: bool = True,
) -> Schedule:
    schedule = await repo.get(schedule_id, for_update=for_update) if schedule_id else None
    if schedule is None or not can_see(user, schedule):
        raise NotFoundError("Schedule not found.")
    return schedule
