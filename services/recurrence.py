"""When a schedule fires: cron evaluation in an IANA zone, and what to do about fires
that were missed. Pure functions of their arguments (no clock, no database), shared
by the API (``nextRuns``, validation) and the scheduler, so the preview is exactly
what fires.

Cron expressions are evaluated by ``cronsim``, which follows Debian's cron, daylight
saving included (see docs/operations.md, "Schedules", for why not ``croniter``):

* when neither the minute nor the hour field starts with ``*``, a local time skipped
  by the clocks jumping forward fires once, at the first instant after the jump, and a
  local time that happens twice fires once, at its first occurrence;
* otherwise the schedule follows the wall clock: a skipped hour does not fire, a
  repeated hour fires again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

from cronsim import CronSim, CronSimError

MAX_CRON_LENGTH = 200
MAX_ZONE_LENGTH = 64
RUN_ONCE_WINDOW = timedelta(hours=24)
# Debian's cron macros; @reboot means nothing to a scheduler that is not the machine's.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = frozenset(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
)
_DAYS = frozenset(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])
_ATOM = re.compile(r"^(\*|[0-9]{1,2}|[A-Za-z]{3})$")


class MisfirePolicy(StrEnum):
    SKIP = "SKIP"
    RUN_ONCE = "RUN_ONCE"


class CronError(ValueError):
    """A cron expression that is not Debian cron syntax, or that never fires."""


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def zone(name: str) -> ZoneInfo:
    """The IANA zone called ``name``; ValueError for anything else (only names from the
    tz database are tried, so no file path or odd string reaches ``ZoneInfo``)."""
    if len(name) > MAX_ZONE_LENGTH or (name not in _zones() and name != "UTC"):
        raise ValueError(f"Unknown time zone {name[:MAX_ZONE_LENGTH]!r}; use an IANA name.")
    return ZoneInfo(name)


def _check_field(index: int, field: str) -> None:
    names = _MONTHS if index == 3 else _DAYS if index == 4 else frozenset()
    for atom in re.split(r"[,/-]", field):
        if not _ATOM.match(atom) or (atom.isalpha() and atom.upper() not in names):
            raise CronError(
                f"Cron field {index + 1} ({field!r}) is not Debian cron syntax: use numbers, "
                "names of months and days, '*', ',', '-' and '/'."
            )


@lru_cache(maxsize=4096)
def normalise_cron(expression: str, *, seconds_field: bool = False) -> str:
    """The five fields to evaluate (a macro expanded). ``seconds_field`` (tests only)
    accepts six fields, seconds first, to run schedules at second granularity."""
    text = expression.strip()
    if not text or len(text) > MAX_CRON_LENGTH:
        raise CronError(f"A cron expression has 5 fields and at most {MAX_CRON_LENGTH} characters.")
    if text.startswith("@"):
        expanded = MACROS.get(text.lower())
        if expanded is None:
            raise CronError(f"Unknown cron macro {text[:20]!r}; use one of {', '.join(MACROS)}.")
        return expanded
    fields = text.split()
    count = 6 if seconds_field and len(fields) == 6 else 5
    if len(fields) != count:
        raise CronError(
            "A cron expression has 5 fields: minute hour day-of-month month day-of-week "
            f"(got {len(fields)})."
        )
    for index, field in enumerate(fields[-5:]):
        _check_field(index, field)
    if count == 6:
        _check_field(0, fields[0])
    return " ".join(fields)


@dataclass(frozen=True)
class Recurrence:
    """When a schedule fires: a cron expression in a zone, or one instant (``run_at``),
    within ``[starts_at, ends_at]``."""

    cron: str | None
    run_at: datetime | None
    timezone: str = "UTC"
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    seconds_field: bool = False

    def instants(self, after: datetime) -> Iterator[datetime]:
        """Fire instants strictly after ``after``, in UTC, oldest first."""
        lower = after
        if self.starts_at is not None and self.starts_at > after:
            lower = self.starts_at - _TICK
        if self.run_at is not None:
            if self.run_at > lower and (self.ends_at is None or self.run_at <= self.ends_at):
                yield self.run_at
            return
        assert self.cron is not None
        tz = zone(self.timezone)
        expression = normalise_cron(self.cron, seconds_field=self.seconds_field)
        try:
            iterator = CronSim(expression, lower.astimezone(tz))
        except CronSimError as error:
            raise CronError(f"Cron expression is not valid: {error}.") from None
        last = lower
        while True:
            try:
                local = next(iterator)
            except (StopIteration, OverflowError, ValueError):
                return  # none within 50 years, or past year 9999
            instant = local.astimezone(UTC)
            # Started inside a repeated hour (fold=1), cronsim may answer the first
            # occurrence, which is earlier: never step back.
            if instant <= last:
                continue
            if self.ends_at is not None and instant > self.ends_at:
                return
            last = instant
            yield instant

    def next_after(self, after: datetime) -> datetime | None:
        return next(self.instants(after), None)

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        result: list[datetime] = []
        for instant in self.instants(after):
            if len(result) >= count:
                break
            result.append(instant)
        return result


_TICK = timedelta(microseconds=1)


def validate_cron(expression: str, timezone: str, *, seconds_field: bool = False) -> None:
    """CronError for a bad expression or one that never fires (e.g. 30 February)."""
    recurrence = Recurrence(
        cron=expression, run_at=None, timezone=timezone, seconds_field=seconds_field
    )
    if recurrence.next_after(datetime.now(UTC)) is None:
        raise CronError("Cron expression never fires.")


@dataclass(frozen=True)
class FirePlan:
    """What to do about one schedule whose next fire instant has come.

    ``fire_at``: the instant to create a calculation for (None: create nothing).
    ``missed``: instants dropped or folded into ``fire_at`` (no scheduler ran in time).
    ``next_fire_at``: the schedule's next instant; None when it is finished.
    """

    fire_at: datetime | None
    missed: int
    next_fire_at: datetime | None
    late: bool


def plan_fire(
    recurrence: Recurrence,
    due: datetime,
    now: datetime,
    *,
    policy: MisfirePolicy,
    grace: timedelta,
) -> FirePlan:
    """Decide about ``due`` (the stored next instant, ``due <= now``).

    On time (at most ``grace`` late: a scheduler was running, or took over in time):
    fire it. Otherwise every instant more than ``grace`` before ``now`` is missed: SKIP
    drops them, RUN_ONCE creates one calculation, for the latest of those in the last
    24 hours. The next instant is then the first one not missed, which may already be
    due (and is handled by the next pass, on time).
    """
    if now - due <= grace:
        return FirePlan(fire_at=due, missed=0, next_fire_at=recurrence.next_after(due), late=False)
    window_start = now - RUN_ONCE_WINDOW
    # Instants older than the window cannot fire: start there, not at a year-old `due`.
    cursor = due - _TICK if due >= window_start else window_start
    missed = 1 if due < window_start else 0
    latest_recent: datetime | None = None
    next_fire_at: datetime | None = None
    for instant in recurrence.instants(cursor):
        if now - instant <= grace:
            next_fire_at = instant
            break
        missed += 1
        latest_recent = instant
    fire_at = latest_recent if policy is MisfirePolicy.RUN_ONCE else None
    return FirePlan(fire_at=fire_at, missed=missed, next_fire_at=next_fire_at, late=True)
