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
from contextlib import AsyncExitStack

from crunchql.pubsub.bus import InProcessEventBus, Subscription
from crunchql.pubsub.channels import user_events_key

USERS = (1, 10, 100, 1000, 5000)
SHARED_KEY = "all-users"


async def routed(users: int, events: int) -> float:
    """Seconds per event with per-user routing (the bus as built)."""
    bus = InProcessEventBus()
    async with AsyncExitStack() as stack:
        mailboxes: list[tuple[Subscription, Subscription]] = []
        for user in range(users):
            mailboxes.append(
                (
                    await stack.enter_async_context(bus.subscribe(user_events_key(user))),
                    await stack.enter_async_context(bus.subscribe(f"calc-{user}")),
                )
            )
        started = time.perf_counter()
        for n in range(events):
            owner = n % users
            await bus.publish(f"calc-{owner}", {"id": f"calc-{owner}", "n": n}, owner=str(owner))
            for subscription in mailboxes[owner]:  # the owner's subscribers read it
                subscription._queue.get_nowait()
        elapsed = time.perf_counter() - started
    return elapsed / events


async def broadcast(users: int, events: int) -> float:
    """Seconds per event when every list subscription gets every event and filters."""
    bus = InProcessEventBus()
    async with AsyncExitStack() as stack:
        lists = [
            (user, await stack.enter_async_context(bus.subscribe(SHARED_KEY)))
            for user in range(users)
        ]
        started = time.perf_counter()
        for n in range(events):
            owner = n % users
            await bus.publish(SHARED_KEY, {"id": f"calc-{owner}", "owner": owner, "n": n})
            for user, subscription in lists:  # each subscriber reads it and drops others'
                event = subscription._queue.get_nowait()
                if event["owner"] != user:
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
