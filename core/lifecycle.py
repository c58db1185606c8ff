"""The calculation lifecycle, typed and in one place.

- :class:`CalculationStatus`: the states a calculation moves through, and their order.
- :class:`CalculationSnapshot`: one calculation's state, immutable (what a subscriber is
  shown; made from a database row by ``db.models.Calculation.to_snapshot``).
- :class:`CalculationEvent`: what crosses the process boundary on the event bus, with
  :meth:`~CalculationEvent.encode` / :meth:`~CalculationEvent.decode`. Published by the
  services (cancel) and by runners (claim, progress, finish); read by ``watch()``.
- :class:`WatchState`: the subscriber's state machine; ``apply(event)`` returns the
  next snapshot to show, or None for a stale or duplicate event. Never a step back.
- :class:`RunOutcome`: how one delivery of a run ended (metrics label it).
- :class:`RetryPolicy`: how often and how soon a run that hit infrastructure trouble
  is tried again (``workers.runner.run_with_policy`` applies it).

Pure: no I/O, no imports from the rest of the service, so both the API process and
the workers import it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

Json = dict[str, Any]

# A status change whose result is bigger than this travels without it (``reload``):
# subscribers read a large result (a big PNG) from the database instead.
EVENT_RESULT_LIMIT = 64 * 1024


class CalculationStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def rank(self) -> int:
        """Order of the lifecycle: QUEUED 0, RUNNING 1, any terminal status 2."""
        return 2 if self.is_terminal else (1 if self is CalculationStatus.RUNNING else 0)


TERMINAL_STATUSES = frozenset(
    {CalculationStatus.SUCCEEDED, CalculationStatus.FAILED, CalculationStatus.CANCELLED}
)
ACTIVE_STATUSES = frozenset({CalculationStatus.QUEUED, CalculationStatus.RUNNING})


class RunOutcome(StrEnum):
    """How one delivery of a calculation to a runner ended. The values are metric labels."""

    SKIPPED = "skipped"  # nothing to claim: finished, cancelled, or alive elsewhere
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # cancelled (or taken over) while it ran
    RELEASED = "released"  # handed back QUEUED for another worker (shutdown)
    RETRY = "retry"  # infrastructure trouble: handed back, to be delivered again later

    @property
    def is_run(self) -> bool:
        """A run that ended here (what metrics count); SKIPPED and RETRY are not."""
        return self not in (RunOutcome.SKIPPED, RunOutcome.RETRY)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Transient failures (database, Redis) are retried ``max_retries`` times, with
    exponential backoff, then the calculation is FAILED. One policy for the Dramatiq
    actor and the embedded queue."""

    max_retries: int = 3
    min_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 15.0

    def gives_up(self, retries: int) -> bool:
        """True when a run that already had ``retries`` retries must not get another."""
        return retries >= self.max_retries

    def backoff(self, retries: int) -> float:
        """Seconds to wait before retry number ``retries + 1``."""
        delay: float = self.min_backoff_seconds * 2.0 ** max(retries, 0)
        return min(delay, self.max_backoff_seconds)


@dataclass(frozen=True, slots=True)
class CalculationSnapshot:
    """A calculation as a subscriber sees it at one moment."""

    id: uuid.UUID
    owner_id: uuid.UUID
    kind: str
    input: Json
    status: CalculationStatus
    progress: float
    version: int
    attempts: int
    created_at: datetime
    result: Json | None = None
    partial_result: Json | None = None
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class EventKind(StrEnum):
    STATUS = "status"  # a status change, carrying the row's state
    PROGRESS = "progress"  # a progress tick of a running attempt


class MalformedEventError(ValueError):
    """A payload on the bus that is not a calculation event: dropped, never applied."""


@dataclass(frozen=True, slots=True)
class CalculationEvent:
    """One change of one calculation, as published on the event bus.

    ``version`` grows with every published change of a calculation; ``attempt`` is the
    run it belongs to (a takeover starts a new attempt, whose versions may be lower).
    A STATUS event carries the row's state so subscribers need not read it back;
    ``reload`` says the result was too big to travel and must be read from the database.
    """

    id: uuid.UUID
    kind: EventKind
    status: CalculationStatus
    attempt: int
    version: int
    progress: float
    partial_result: Json | None = None
    result: Json | None = None
    reload: bool = False
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @classmethod
    def status_change(cls, snapshot: CalculationSnapshot) -> CalculationEvent:
        return cls(
            id=snapshot.id,
            kind=EventKind.STATUS,
            status=snapshot.status,
            attempt=snapshot.attempts,
            version=snapshot.version,
            progress=snapshot.progress,
            result=snapshot.result,
            error=snapshot.error,
            started_at=snapshot.started_at,
            finished_at=snapshot.finished_at,
        )

    @classmethod
    def progress_tick(
        cls,
        calculation_id: uuid.UUID,
        *,
        attempt: int,
        version: int,
        progress: float,
        partial_result: Json | None,
    ) -> CalculationEvent:
        return cls(
            id=calculation_id,
            kind=EventKind.PROGRESS,
            status=CalculationStatus.RUNNING,
            attempt=attempt,
            version=version,
            progress=progress,
            partial_result=partial_result,
        )

    @property
    def terminal(self) -> bool:
        return self.status.is_terminal

    # ---- the wire format: compact JSON, camelCase keys, absent when empty ----------

    def encode(self) -> str:
        payload = self._payload()
        text = _dumps(payload)
        if self.result is not None and len(text) > EVENT_RESULT_LIMIT:
            del payload["result"]
            payload["reload"] = True
            text = _dumps(payload)
        return text

    def _payload(self) -> Json:
        payload: Json = {
            "id": str(self.id),
            "kind": self.kind.value,
            "status": self.status.value,
            "attempt": self.attempt,
            "version": self.version,
            "progress": self.progress,
        }
        optional = {
            "partialResult": self.partial_result,
            "result": self.result,
            "reload": self.reload or None,
            "error": self.error,
            "startedAt": self.started_at.isoformat() if self.started_at else None,
            "finishedAt": self.finished_at.isoformat() if self.finished_at else None,
        }
        payload.update((key, value) for key, value in optional.items() if value is not None)
        return payload

    @classmethod
    def decode(cls, data: str | bytes) -> CalculationEvent:
        """The event in ``data``; MalformedEventError for anything else (unknown keys
        are ignored, so a newer publisher may add some)."""
        try:
            payload = json.loads(data)
        except (ValueError, RecursionError) as error:  # bad JSON or UTF-8, deep nesting
            raise MalformedEventError(f"not JSON: {error}") from None
        if not isinstance(payload, dict):
            raise MalformedEventError("not a JSON object")
        try:
            event = cls(
                id=uuid.UUID(_typed(payload, "id", str)),
                kind=EventKind(_typed(payload, "kind", str)),
                status=CalculationStatus(_typed(payload, "status", str)),
                attempt=_count(payload, "attempt"),
                version=_count(payload, "version"),
                progress=_fraction(payload, "progress"),
                partial_result=_optional(payload, "partialResult", dict),
                result=_optional(payload, "result", dict),
                reload=_optional(payload, "reload", bool) or False,
                error=_optional(payload, "error", str),
                started_at=_moment(payload, "startedAt"),
                finished_at=_moment(payload, "finishedAt"),
            )
        except MalformedEventError:
            raise
        except (ValueError, TypeError) as error:
            raise MalformedEventError(str(error)) from None
        if event.kind is EventKind.PROGRESS and event.status is not CalculationStatus.RUNNING:
            raise MalformedEventError("a progress event of a calculation that is not RUNNING")
        if event.reload and event.result is not None:
            raise MalformedEventError("both a result and reload")
        return event


def _dumps(payload: Json) -> str:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False)


def _typed(payload: Json, key: str, kind: type[Any]) -> Any:
    value = payload.get(key)
    # bool is an int in Python; never accept one for the other.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise MalformedEventError(f"{key!r} must be a {kind.__name__}")
    return value


def _optional(payload: Json, key: str, kind: type[Any]) -> Any:
    return None if payload.get(key) is None else _typed(payload, key, kind)


def _count(payload: Json, key: str) -> int:
    value: int = _typed(payload, key, int)
    if value < 0:
        raise MalformedEventError(f"{key!r} must not be negative")
    return value


def _fraction(payload: Json, key: str) -> float:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedEventError(f"{key!r} must be a number")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise MalformedEventError(f"{key!r} must be between 0 and 1")
    return float(value)


def _moment(payload: Json, key: str) -> datetime | None:
    raw = _optional(payload, key, str)
    if raw is None:
        return None
    moment = datetime.fromisoformat(raw)
    if moment.tzinfo is None:
        raise MalformedEventError(f"{key!r} has no UTC offset")
    return moment


class WatchState:
    """What one subscriber has been shown so far, and which update is worth showing next.

    The rules: updates never step back. A status change is newer when it has a later
    status, a later attempt (a takeover), or a later version of the same attempt; a
    progress tick is shown only when it reports more than was shown already (a re-run
    starts again from zero, the database lags the events). No I/O: the caller reads
    the database when :meth:`needs_read` says so and hands the row to :meth:`refresh`.
    """

    def __init__(self, initial: CalculationSnapshot) -> None:
        self._current = initial
        self._version = initial.version  # the highest version seen, ticks included

    @property
    def current(self) -> CalculationSnapshot:
        return self._current

    @property
    def done(self) -> bool:
        return self._current.status.is_terminal

    def needs_read(self, event: CalculationEvent) -> bool:
        """True when the event announces a change it does not describe (a result too big
        to travel, or a tick of a run whose start this subscriber never saw)."""
        if event.id != self._current.id:
            return False
        if event.kind is EventKind.STATUS:
            return event.reload
        current = self._current
        return event.status.rank > current.status.rank or (
            event.status is current.status and event.attempt > current.attempts
        )

    def apply(self, event: CalculationEvent) -> CalculationSnapshot | None:
        """The snapshot to show after ``event``; None when it is stale, a duplicate,
        another calculation's, or needs a read (see :meth:`needs_read`)."""
        if event.id != self._current.id or self.needs_read(event):
            return None
        current = self._current
        if event.kind is EventKind.STATUS:
            seen = (current.status.rank, current.attempts, self._version)
            if (event.status.rank, event.attempt, event.version) <= seen:
                return None
            update = dataclasses.replace(
                current,
                status=event.status,
                progress=max(current.progress, event.progress),
                version=event.version,
                attempts=event.attempt,
                result=event.result,
                partial_result=None,
                error=event.error,
                started_at=event.started_at,
                finished_at=event.finished_at,
            )
        else:
            if (
                event.status is not current.status
                or event.attempt < current.attempts
                or event.progress <= current.progress
            ):
                return None
            update = dataclasses.replace(
                current, progress=event.progress, partial_result=event.partial_result
            )
        return self._show(update, event.version)

    def refresh(self, row: CalculationSnapshot) -> CalculationSnapshot | None:
        """The snapshot to show after reading the row again (a quiet spell, a resync, a
        big result); None when the row holds nothing newer than what was shown."""
        if row.id != self._current.id:
            return None
        current = self._current
        progress = max(current.progress, row.progress)
        if (row.status.rank, progress) <= (
            current.status.rank,
            current.progress,
        ) and row.version <= self._version:
            return None
        return self._show(dataclasses.replace(row, progress=progress), row.version)

    def _show(self, update: CalculationSnapshot, version: int) -> CalculationSnapshot:
        self._version = max(self._version, version)
        self._current = update
        return update
