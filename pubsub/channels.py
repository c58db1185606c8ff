"""Channel and key names, in one place."""

from __future__ import annotations

# Every calculation event goes out on one channel; each API process subscribes to it
# once and fans messages out to its own subscribers by calculation id.
CALCULATION_EVENTS = "crunchql:calculation-events"


def queue_wakeup_key(queue_name: str) -> str:
    """A list a worker blocks on while idle, pushed to on every enqueue."""
    return f"crunchql:wakeup:{queue_name}"


# Session revocations and account changes share the event bus (and so its one Redis
# channel) under this key: every API process listens to it once.
SESSION_EVENTS = "crunchql:session-events"
