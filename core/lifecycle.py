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
import operator
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
    SPLIT = "split"  # split into shards, sent to run on any workers

    @property
    def is_run(self) -> bool:
        """A run that ended here (what metrics count); SKIPPED, RETRY and SPLIT are not."""
        return self not in (RunOutcome.SKIPPED, RunOutcome.RETRY, RunOutcome.SPLIT)


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
    shards: int = 1
    shards_done: int = 0
    device: str | None = None
    # Set for a calculation a schedule created (never changes).
    schedule_id: uuid.UUID | None = None
    scheduled_for: datetime | None = None


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
    # A split calculation's shards (1 when not split), those done, and its device.
    shards: int = 1
    shards_done: int = 0
    device: str | None = None
    # Routes the event to its owner's list views (myCalculationUpdates) as well.
    owner_id: uuid.UUID | None = None

    @classmethod
    def status_change(cls, snapshot: CalculationSnapshot) -> CalculationEvent:
        return cls(
            id=snapshot.id,
            owner_id=snapshot.owner_id,
            kind=EventKind.STATUS,
            status=snapshot.status,
            attempt=snapshot.attempts,
            version=snapshot.version,
            progress=snapshot.progress,
            result=snapshot.result,
            error=snapshot.error,
            started_at=snapshot.started_at,
            finished_at=snapshot.finished_at,
            shards=snapshot.shards,
            shards_done=snapshot.shards_done,
            device=snapshot.device,
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
        shards: int = 1,
        shards_done: int = 0,
        owner_id: uuid.UUID | None = None,
    ) -> CalculationEvent:
        return cls(
            id=calculation_id,
            owner_id=owner_id,
            kind=EventKind.PROGRESS,
            status=CalculationStatus.RUNNING,
            attempt=attempt,
            version=version,
            progress=progress,
            partial_result=partial_result,
            shards=shards,
            shards_done=shards_done,
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
        payload: Json = {"id": str(self.id)}  # first: see peek_id
        if self.owner_id is not None:
            payload["owner"] = str(self.owner_id)  # second: see peek_owner
        payload |= {
            "kind": self.kind.value,
            "status": self.status.value,
            "attempt": self.attempt,
            "version": self.version,
            "progress": self.progress,
        }
        if self.partial_result is not None:
            payload["partialResult"] = self.partial_result
        if self.result is not None:
            payload["result"] = self.result
        if self.reload:
            payload["reload"] = True
        if self.error is not None:
            payload["error"] = self.error
        if self.started_at is not None:
            payload["startedAt"] = self.started_at.isoformat()
        if self.finished_at is not None:
            payload["finishedAt"] = self.finished_at.isoformat()
        if self.shards != 1:
            payload["shards"] = self.shards
            payload["shardsDone"] = self.shards_done
        if self.device is not None:
            payload["device"] = self.device
        return payload

    @classmethod
    def peek_id(cls, data: str | bytes) -> uuid.UUID | None:
        """The calculation id of an encoded event without decoding it (the id leads the
        encoding), so a process can skip events nobody there watches; None when ``data``
        does not start like an encoded event (decode it to find out why)."""
        head = data[: len(_ID_PREFIX) + 37]
        if isinstance(head, bytes):
            head = head.decode("ascii", "replace")
        if not head.startswith(_ID_PREFIX) or head[-1:] != '"':
            return None
        try:
            return uuid.UUID(head[len(_ID_PREFIX) : -1])
        except ValueError:
            return None

    @classmethod
    def peek_owner(cls, data: str | bytes) -> uuid.UUID | None:
        """The owner's id of an encoded event without decoding it (it follows the id);
        None when there is none or ``data`` does not start like an encoded event."""
        start = len(_ID_PREFIX) + 37
        head = data[start : start + len(_OWNER_PREFIX) + 37]
        if isinstance(head, bytes):
            head = head.decode("ascii", "replace")
        if not head.startswith(_OWNER_PREFIX) or head[-1:] != '"':
            return None
        try:
            return uuid.UUID(head[len(_OWNER_PREFIX) : -1])
        except ValueError:
            return None

    @classmethod
    def decode(cls, data: str | bytes) -> CalculationEvent:
        """The event in ``data``; MalformedEventError for anything else (unknown keys
        are ignored, so a newer publisher may add some)."""
        try:
            payload = json.loads(data)
        except (ValueError, RecursionError) as error:  # bad JSON or UTF-8, deep nesting
            raise MalformedEventError(f"not JSON: {error}") from None
        if type(payload) is not dict:
            raise MalformedEventError("not a JSON object")
        try:
            kind = _KINDS[payload["kind"]]
            status = _STATUSES[payload["status"]]
            raw_id, attempt, version = payload["id"], payload["attempt"], payload["version"]
            progress = payload["progress"]
        except (KeyError, TypeError) as error:  # absent, or not a known (hashable) value
            raise MalformedEventError(f"missing or unknown {error}") from None
        # type() rather than isinstance(): a bool is an int, and must not pass for one.
        if type(raw_id) is not str:
            raise MalformedEventError("'id' must be a string")
        if type(attempt) is not int or type(version) is not int or min(attempt, version) < 0:
            raise MalformedEventError("'attempt' and 'version' must be counts")
        if type(progress) is int:
            progress = float(progress)
        if type(progress) is not float or not 0.0 <= progress <= 1.0:  # NaN fails too
            raise MalformedEventError("'progress' must be a number between 0 and 1")
        get = payload.get
        partial, result = get("partialResult"), get("result")
        reload, message, owner = get("reload", False), get("error"), get("owner")
        if owner is not None and type(owner) is not str:
            raise MalformedEventError("'owner' must be a string")
        if partial is not None and type(partial) is not dict:
            raise MalformedEventError("'partialResult' must be an object")
        if result is not None and type(result) is not dict:
            raise MalformedEventError("'result' must be an object")
        if type(reload) is not bool or (message is not None and type(message) is not str):
            raise MalformedEventError("'reload' must be a boolean and 'error' a string")
        shards, shards_done, device = get("shards", 1), get("shardsDone", 0), get("device")
        if type(shards) is not int or type(shards_done) is not int:
            raise MalformedEventError("'shards' and 'shardsDone' must be counts")
        if not 0 <= shards_done <= shards or shards < 1:
            raise MalformedEventError("'shardsDone' must be between 0 and 'shards'")
        if device is not None and type(device) is not str:
            raise MalformedEventError("'device' must be a string")
        try:
            event = cls(
                id=uuid.UUID(raw_id),
                kind=kind,
                status=status,
                attempt=attempt,
                version=version,
                progress=progress,
                partial_result=partial,
                result=result,
                reload=reload,
                error=message,
                started_at=_moment(get("startedAt")),
                finished_at=_moment(get("finishedAt")),
                shards=shards,
                shards_done=shards_done,
                device=device,
                owner_id=uuid.UUID(owner) if owner is not None else None,
            )
        except ValueError as failure:  # a malformed UUID or timestamp
            raise MalformedEventError(str(failure)) from None
        if event.kind is EventKind.PROGRESS and event.status is not CalculationStatus.RUNNING:
            raise MalformedEventError("a progress event of a calculation that is not RUNNING")
        if event.reload and event.result is not None:
            raise MalformedEventError("both a result and reload")
        return event


_ID_PREFIX = '{"id":"'
_OWNER_PREFIX = ',"owner":"'
_KINDS = {kind.value: kind for kind in EventKind}
_STATUSES = {status.value: status for status in CalculationStatus}


# One encoder: json.dumps() with options builds a new one on every call. (NaN is let
# through as before: results pass through JSONB, which refuses it, long before this.)
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _moment(raw: object) -> datetime | None:
    if raw is None:
        return None
    if type(raw) is not str:
        raise MalformedEventError("a timestamp must be a string")
    moment = datetime.fromisoformat(raw)
    if moment.tzinfo is None:
        raise MalformedEventError("a timestamp without a UTC offset")
    return moment


_SNAPSHOT_FIELDS = tuple(field.name for field in dataclasses.fields(CalculationSnapshot))
_SNAPSHOT_INDEX = {name: index for index, name in enumerate(_SNAPSHOT_FIELDS)}
_snapshot_values = operator.attrgetter(*_SNAPSHOT_FIELDS)


def _evolve(current: CalculationSnapshot, **changes: Any) -> CalculationSnapshot:
    """``dataclasses.replace`` in half the time (it runs once per subscriber per event):
    every field is a plain positional ``__init__`` argument."""
    values = list(_snapshot_values(current))
    for name, value in changes.items():
        values[_SNAPSHOT_INDEX[name]] = value
    return CalculationSnapshot(*values)


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
            update = _evolve(
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
                shards=event.shards,
                shards_done=event.shards_done,
                device=event.device,
            )
        else:
            if (
                event.status is not current.status
                or event.attempt < current.attempts
                or event.progress <= current.progress
            ):
                return None
            update = _evolve(
                current,
                progress=event.progress,
                partial_result=event.partial_result,
                shards=max(current.shards, event.shards),
                shards_done=max(current.shards_done, event.shards_done),
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
