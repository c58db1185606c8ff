"""The lifecycle types: the event's wire format, the watcher's never-step-back rules,
outcomes and the retry policy. Pure: no database, no bus."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from crunchql.core.lifecycle import (
    EVENT_RESULT_LIMIT,
    CalculationEvent,
    CalculationSnapshot,
    CalculationStatus,
    EventKind,
    MalformedEventError,
    RetryPolicy,
    RunOutcome,
    WatchState,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ID = uuid.UUID("6f1c1a52-3a8e-4a55-9a61-0d4f7c2a9b10")


def snapshot(**values: object) -> CalculationSnapshot:
    base = CalculationSnapshot(
        id=ID, owner_id=uuid.uuid4(), kind="monteCarloPi", input={"samples": 10},
        status=CalculationStatus.QUEUED, progress=0.0, version=0, attempts=0, created_at=NOW,
    )  # fmt: skip
    return dataclasses.replace(base, **values)  # type: ignore[arg-type]


def status_change(**values: object) -> CalculationEvent:
    return CalculationEvent.status_change(snapshot(**values))


def tick(progress: float, version: int, attempt: int = 1) -> CalculationEvent:
    return CalculationEvent.progress_tick(
        ID, attempt=attempt, version=version, progress=progress, partial_result={"p": progress}
    )


# ---- the wire format ---------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        tick(0.25, 3),
        status_change(status=CalculationStatus.RUNNING, attempts=2, version=5, started_at=NOW),
        status_change(
            status=CalculationStatus.SUCCEEDED,
            attempts=1,
            version=9,
            progress=1.0,
            result={"estimate": 3.14, "samples": 10},
            started_at=NOW,
            finished_at=NOW + timedelta(seconds=3),
        ),
        status_change(status=CalculationStatus.FAILED, attempts=1, version=4, error="boom ünï"),
        status_change(
            status=CalculationStatus.RUNNING,
            attempts=1,
            version=2,
            shards=8,
            shards_done=3,
            device="cpu",
        ),
        CalculationEvent.progress_tick(
            ID, attempt=1, version=7, progress=0.5, partial_result=None, shards=4, shards_done=2
        ),
    ],
)
def test_an_event_survives_encode_and_decode(event: CalculationEvent) -> None:
    encoded = event.encode()
    assert CalculationEvent.decode(encoded) == event
    assert CalculationEvent.decode(encoded.encode()) == event  # bytes, as Redis delivers


def test_a_result_too_big_to_travel_becomes_a_reload_marker() -> None:
    big = {"png": "x" * (EVENT_RESULT_LIMIT + 1), "width": 4096}
    event = status_change(status=CalculationStatus.SUCCEEDED, attempts=1, version=3, result=big)
    decoded = CalculationEvent.decode(event.encode())
    assert decoded.reload and decoded.result is None
    assert decoded == dataclasses.replace(event, result=None, reload=True)
    assert len(event.encode()) < 1024


VALID = json.loads(tick(0.5, 2).encode())
REQUIRED = ("id", "kind", "status", "attempt", "version", "progress")


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "not json",
        b"\xff\xfe",
        "[]",
        "null",
        json.dumps("a string"),
        "[" * 100_000,
        *[json.dumps({k: v for k, v in VALID.items() if k != key}) for key in REQUIRED],
        json.dumps({**VALID, "id": "not-a-uuid"}),
        json.dumps({**VALID, "id": 7}),
        json.dumps({**VALID, "kind": "gossip"}),
        json.dumps({**VALID, "status": "DONE"}),
        json.dumps({**VALID, "status": "SUCCEEDED"}),  # a tick of a finished calculation
        json.dumps({**VALID, "attempt": -1}),
        json.dumps({**VALID, "attempt": True}),
        json.dumps({**VALID, "version": 1.5}),
        json.dumps({**VALID, "version": "3"}),
        json.dumps({**VALID, "progress": 1.5}),
        json.dumps({**VALID, "progress": -0.1}),
        json.dumps({**VALID, "progress": "half"}),
        json.dumps({**VALID, "progress": False}),
        json.dumps(VALID).replace('"progress": 0.5', '"progress": NaN'),
        json.dumps({**VALID, "partialResult": [1, 2]}),
        json.dumps({**VALID, "error": 42}),
        json.dumps({**VALID, "reload": "yes"}),
        json.dumps({**VALID, "startedAt": "yesterday"}),
        json.dumps({**VALID, "startedAt": "2026-11-28T12:00:00"}),  # no offset
        json.dumps({**VALID, "kind": "status", "reload": True, "result": {"a": 1}}),
        json.dumps({**VALID, "shards": 0}),
        json.dumps({**VALID, "shards": "8"}),
        json.dumps({**VALID, "shards": 2, "shardsDone": 3}),
        json.dumps({**VALID, "shards": 2, "shardsDone": -1}),
        json.dumps({**VALID, "shardsDone": True}),
        json.dumps({**VALID, "device": 1}),
        json.dumps({**VALID, "owner": 7}),
        json.dumps({**VALID, "owner": "not-a-uuid"}),
    ],
)
def test_malformed_payloads_are_refused(payload: str | bytes) -> None:
    with pytest.raises(MalformedEventError):
        CalculationEvent.decode(payload)


def test_unknown_keys_are_ignored_so_publishers_may_add_some() -> None:
    assert CalculationEvent.decode(json.dumps({**VALID, "future": 1})) == tick(0.5, 2)


def test_a_watcher_shows_shards_done_from_progress_ticks_and_status_changes() -> None:
    state = WatchState(snapshot(status=CalculationStatus.RUNNING, attempts=1, version=1))
    split = status_change(status=CalculationStatus.RUNNING, attempts=1, version=2, shards=4,
                          device="cpu")  # fmt: skip
    shown = state.apply(split)
    assert shown is not None and (shown.shards, shown.shards_done, shown.device) == (4, 0, "cpu")
    tick_ = CalculationEvent.progress_tick(
        ID, attempt=1, version=3, progress=0.5, partial_result=None, shards=4, shards_done=2
    )
    shown = state.apply(tick_)
    assert shown is not None and (shown.shards, shown.shards_done) == (4, 2)


def test_an_event_is_immutable() -> None:
    event = tick(0.5, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.progress = 0.9  # type: ignore[misc]


# ---- the watcher's state machine ----------------------------------------------------


def running_state() -> WatchState:
    state = WatchState(snapshot())
    shown = state.apply(status_change(status=CalculationStatus.RUNNING, attempts=1, version=1))
    assert shown is not None and shown.status is CalculationStatus.RUNNING
    return state


def test_progress_only_moves_forward() -> None:
    state = running_state()
    shown = [state.apply(tick(p, v)) for p, v in [(0.2, 2), (0.1, 3), (0.2, 3), (0.5, 4)]]
    assert [s.progress if s else None for s in shown] == [0.2, None, None, 0.5]
    assert state.current.partial_result == {"p": 0.5}


def test_snapshots_are_new_immutable_values() -> None:
    state = running_state()
    before = state.current
    after = state.apply(tick(0.3, 2))
    assert after is not None and after is state.current
    assert before.progress == 0.0 and after.progress == 0.3  # the old one is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.progress = 1.0  # type: ignore[misc]


def test_stale_and_duplicate_status_changes_return_none() -> None:
    state = running_state()
    duplicate = status_change(status=CalculationStatus.RUNNING, attempts=1, version=1)
    assert state.apply(duplicate) is None
    assert state.apply(status_change(status=CalculationStatus.QUEUED, version=7)) is None
    assert state.apply(tick(0.4, 6)) is not None
    # Same status and attempt, a version not above what was seen (ticks included).
    assert state.apply(status_change(status=CalculationStatus.RUNNING, attempts=1,
                                     version=6)) is None  # fmt: skip
    assert state.apply(tick(0.9, 9, attempt=0)) is None  # a tick from an earlier run
    other = dataclasses.replace(tick(0.9, 9), id=uuid.uuid4())
    assert state.apply(other) is None and not state.needs_read(other)
    assert state.current.progress == 0.4


def test_a_takeover_is_newer_even_with_a_lower_version_and_never_steps_back() -> None:
    state = WatchState(snapshot(status=CalculationStatus.RUNNING, attempts=1, version=40,
                                progress=0.3))  # fmt: skip
    takeover = status_change(status=CalculationStatus.RUNNING, attempts=2, version=12)
    shown = state.apply(takeover)
    assert shown is not None and shown.attempts == 2
    assert shown.progress == 0.3  # the new run starts from zero; the subscriber never sees it
    assert state.apply(tick(0.1, 13, attempt=2)) is None
    assert state.apply(tick(0.35, 14, attempt=2)) is not None


def test_the_terminal_event_carries_the_result_and_ends_the_watch() -> None:
    state = running_state()
    done = status_change(
        status=CalculationStatus.SUCCEEDED, attempts=1, version=5, progress=1.0,
        result={"estimate": 3.0}, finished_at=NOW,
    )  # fmt: skip
    shown = state.apply(done)
    assert shown is not None and shown.result == {"estimate": 3.0} and state.done
    assert shown.partial_result is None
    assert state.apply(tick(0.99, 6)) is None


def test_what_an_event_cannot_describe_asks_for_a_read() -> None:
    state = running_state()
    big = dataclasses.replace(
        status_change(status=CalculationStatus.SUCCEEDED, attempts=1, version=5), reload=True
    )
    assert state.needs_read(big) and state.apply(big) is None
    # A tick of a run whose start was never seen (its status change was lost).
    assert state.needs_read(tick(0.2, 9, attempt=2))
    queued = WatchState(snapshot())
    assert queued.needs_read(tick(0.2, 3))
    assert not state.needs_read(tick(0.2, 3))


def test_a_read_is_shown_only_when_it_holds_something_newer() -> None:
    state = running_state()
    state.apply(tick(0.6, 4))
    # The database lags the events: an older progress is not shown, nor a step back.
    assert state.refresh(snapshot(status=CalculationStatus.RUNNING, attempts=1, version=3,
                                  progress=0.5)) is None  # fmt: skip
    finished = state.refresh(
        snapshot(status=CalculationStatus.SUCCEEDED, attempts=1, version=6, progress=1.0,
                 result={"png": "..."})
    )  # fmt: skip
    assert finished is not None and finished.result == {"png": "..."} and state.done
    # A resync after a takeover that reset progress in the row still shows no step back.
    fresh = running_state()
    fresh.apply(tick(0.7, 4))
    moved = fresh.refresh(snapshot(status=CalculationStatus.RUNNING, attempts=2, version=9,
                                   progress=0.1))  # fmt: skip
    assert moved is not None and moved.progress == 0.7 and moved.attempts == 2


# ---- outcomes and the retry policy --------------------------------------------------


def test_only_runs_that_ended_are_counted() -> None:
    counted = {outcome for outcome in RunOutcome if outcome.is_run}
    assert counted == {
        RunOutcome.SUCCEEDED, RunOutcome.FAILED, RunOutcome.CANCELLED, RunOutcome.RELEASED,
    }  # fmt: skip


def test_the_retry_policy_gives_up_after_max_retries_with_growing_bounded_backoff() -> None:
    policy = RetryPolicy(max_retries=3, min_backoff_seconds=0.5, max_backoff_seconds=3.0)
    assert [policy.gives_up(n) for n in range(5)] == [False, False, False, True, True]
    assert [policy.backoff(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert RetryPolicy(max_retries=0).gives_up(0)


def test_event_kinds_are_distinct() -> None:
    assert tick(0.1, 1).kind is EventKind.PROGRESS
    assert status_change().kind is EventKind.STATUS
    assert status_change(status=CalculationStatus.CANCELLED).terminal


def test_the_id_can_be_read_without_decoding() -> None:
    event = status_change(status=CalculationStatus.RUNNING, attempts=1, version=2)
    assert CalculationEvent.peek_id(event.encode()) == ID
    assert CalculationEvent.peek_id(event.encode().encode()) == ID
    for junk in ["", "{}", '{"id":"nope"}', b"\xff" * 60, '{"kind":"status","id":"' + str(ID)]:
        assert CalculationEvent.peek_id(junk) is None


def test_the_owner_travels_and_can_be_read_without_decoding() -> None:
    event = status_change(status=CalculationStatus.RUNNING, attempts=1, version=2)
    assert event.owner_id is not None  # a status change names its owner (the snapshot's)
    assert CalculationEvent.decode(event.encode()).owner_id == event.owner_id
    assert CalculationEvent.peek_owner(event.encode()) == event.owner_id
    assert CalculationEvent.peek_owner(event.encode().encode()) == event.owner_id
    assert CalculationEvent.peek_owner(tick(0.5, 2).encode()) is None  # no owner given
    for junk in ["", "{}", b"\xff" * 120, '{"id":"' + str(ID) + '","owner":"nope"}']:
        assert CalculationEvent.peek_owner(junk) is None


# ---- layering ---------------------------------------------------------------------


def _imported_by(module: str) -> set[str]:
    import subprocess
    import sys

    code = (
        f"import sys, {module}; "
        "print('\\n'.join(m for m in sys.modules if m.startswith('crunchql.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_the_lifecycle_module_imports_nothing_of_the_service() -> None:
    assert _imported_by("crunchql.core.lifecycle") == {"crunchql.core", "crunchql.core.lifecycle"}


def test_the_runner_does_not_import_the_api_use_cases() -> None:
    imported = _imported_by("crunchql.workers.runner")
    assert "crunchql.services.calculations" not in imported
    assert not {m for m in imported if m.split(".")[1] in {"app", "resolvers", "schema"}}


def test_a_watch_update_is_the_snapshot_dataclasses_replace_would_make() -> None:
    from crunchql.core.lifecycle import _evolve

    current = snapshot(result={"a": 1}, started_at=datetime.now(UTC), shards=3)
    changes = {"progress": 0.5, "partial_result": {"p": 1}, "shards_done": 2}
    assert _evolve(current, **changes) == dataclasses.replace(current, **changes)  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        _evolve(current, nope=1)
