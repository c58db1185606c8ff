"""What one calculation event costs an API process, against the number of users connected.

    python -m benchmarks.fanout [--events 20000] [--runs 5]

Each connected user holds one ``myCalculationUpdates`` subscription (the list view) and
one ``calculationUpdates`` subscription. An event is published with its owner, as the
runner does, and the time until it sits in the owner's mailboxes is measured over
``--events`` events, median of ``--runs`` runs. Side by side, the design per-user routing
replaces: every list subscription listening on one shared key and dropping the events of
other users. Prints one table (microseconds per event).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from contextlib import AsyncExitStack

from crunchql.core.lifecycle import CalculationEvent
from crunchql.pubsub.bus import InProcessEventBus, Subscription
from crunchql.pubsub.channels import user_events_key

USERS = (1, 10, 100, 1000, 5000)
SHARED_KEY = uuid.UUID(int=0)


def tick(calculation_id: uuid.UUID, owner_id: uuid.UUID | None, n: int) -> CalculationEvent:
    return CalculationEvent.progress_tick(
        calculation_id, attempt=1, version=n, progress=0.5, partial_result=None, owner_id=owner_id
    )


async def routed(users: int, events: int) -> float:
    """Seconds per event with per-user routing (the bus as built)."""
    bus = InProcessEventBus()
    async with AsyncExitStack() as stack:
        owners = [uuid.uuid4() for _ in range(users)]
        calculations = [uuid.uuid4() for _ in range(users)]
        mailboxes: list[tuple[Subscription, Subscription]] = []
        for owner_id, calculation_id in zip(owners, calculations, strict=True):
            mailboxes.append(
                (
                    await stack.enter_async_context(bus.subscribe(user_events_key(owner_id))),
                    await stack.enter_async_context(bus.subscribe(calculation_id)),
                )
            )
        started = time.perf_counter()
        for n in range(events):
            owner = n % users
            await bus.publish(tick(calculations[owner], owners[owner], n))
            for subscription in mailboxes[owner]:  # the owner's subscribers read it
                subscription._queue.get_nowait()
        elapsed = time.perf_counter() - started
    return elapsed / events


async def broadcast(users: int, events: int) -> float:
    """Seconds per event when every list subscription gets every event and filters."""
    bus = InProcessEventBus()
    async with AsyncExitStack() as stack:
        owners = [uuid.uuid4() for _ in range(users)]
        lists = [
            (owner_id, await stack.enter_async_context(bus.subscribe(SHARED_KEY)))
            for owner_id in owners
        ]
        started = time.perf_counter()
        for n in range(events):
            # Every event on the one shared key, naming its owner.
            await bus.publish(tick(SHARED_KEY, owners[n % users], n))
            for owner_id, subscription in lists:  # each subscriber reads it, drops others'
                event = subscription._queue.get_nowait()
                if isinstance(event, CalculationEvent) and event.owner_id != owner_id:
                    continue
        elapsed = time.perf_counter() - started
    return elapsed / events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    print(f"{'users':>6} | {'per-user routing':>17} | {'broadcast + filter':>18} | ratio")
    print(f"{'-' * 6}-|-{'-' * 17}-|-{'-' * 18}-|------")
    for users in USERS:
        # The broadcast cost grows with users: fewer events keep its run short.
        broadcast_events = max(200, args.events // max(1, users // 10))
        ours = statistics.median(asyncio.run(routed(users, args.events)) for _ in range(args.runs))
        theirs = statistics.median(
            asyncio.run(broadcast(users, broadcast_events)) for _ in range(args.runs)
        )
        print(
            f"{users:>6} | {ours * 1e6:>14.2f} µs | {theirs * 1e6:>15.2f} µs | "
            f"{theirs / ours:>5.1f}x"
        )


if __name__ == "__main__":
    main()
