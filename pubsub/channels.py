"""Channel and key names, in one place."""

from __future__ import annotations

# Every calculation event goes out on one channel; each API process subscribes to it
# once and fans messages out to its own subscribers by calculation id.
CALCULATION_EVENTS = "crunchql:calculation-events"


def user_events_key(user_id: object) -> str:
    """The fan-out key of one user's calculation events (``myCalculationUpdates``), next to
    the per-calculation key (the calculation id itself). An event published with an
    owner reaches both, over the same Redis message."""
    return f"user:{user_id}"


def queue_wakeup_key(queue_name: str) -> str:
    """A list a worker blocks on while idle, pushed to on every enqueue."""
    return f"crunchql:wakeup:{queue_name}"


# Session revocations and account changes: their own channel, heard over the event
# bus's one pub/sub connection by every API process.
SESSION_EVENTS = "crunchql:session-events"
