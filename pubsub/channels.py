"""Channel and key names, in one place."""

from __future__ import annotations

# Every calculation event goes out on one channel; each API process subscribes to it
# once and fans messages out to its own subscribers by calculation id.
CALCULATION_EVENTS = "crunchql:calculation-events"


def queue_wakeup_key(queue_name: str) -> str:
    """A list a worker blocks on while idle, pushed to on every enqueue."""
    return f"crunchql:wakeup:{queue_name}"
