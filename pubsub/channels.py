"""Channel and key names, in one place."""

from __future__ import annotations

# Every calculation event goes out on one channel; each API process subscribes to it
# once and fans messages out to its own subscribers by calculation id.
CALCULATION_EVENTS = "crunchql:calculation-events"


def queue_wakeup_key(queue_name: str) -> str:
    """A list a worker blocks on while idle, pushed to on every enqueue."""
    return f"crunchql:wakeup:{queue_name}"


# Session revocations and account changes: their own channel, heard over the event
# bus's one pub/sub connection by every API process.
SESSION_EVENTS = "crunchql:session-events"
