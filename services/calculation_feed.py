"""``myCalculationUpdates``: every change to any of the caller's calculations, on one
subscription, for a list view.

It listens on the caller's own key of the bus (``user_events_key``): every event names
its owner, so an event costs a dictionary lookup per API process whatever the number of
users connected. Per calculation it applies the same rules as ``watch``
(:class:`~crunchql.core.lifecycle.WatchState`: never a step back, stale and duplicate
events dropped), reading a row from the database only the first time it sees the
calculation, when an event says so (a big result, a run it never saw start), or on a
``resync`` marker (a lost Redis connection, a full mailbox).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable

from crunchql.core.lifecycle import CalculationEvent, CalculationSnapshot, WatchState
from crunchql.db.engine import read_only
from crunchql.db.models import CalculationStatus, User
from crunchql.db.repositories import CalculationRepository
from crunchql.pubsub.bus import RESYNC, Delivery
from crunchql.pubsub.channels import user_events_key
from crunchql.services.calculations import can_see, check_kind
from crunchql.services.container import ServiceContainer

MAX_TRACKED = 512  # calculations followed per subscription (a list view shows far fewer)
RESYNC_RECENT = 50  # on a resync, the newest calculations are read again as well


class _Feed:
    def __init__(self, services: ServiceContainer, user: User) -> None:
        self.services = services
        self.user = user
        # Calculations still moving, with what was shown of each; finished ones only
        # by id (anything later about them is stale, and their results may be big).
        self.moving: OrderedDict[uuid.UUID, WatchState] = OrderedDict()
        self.finished: OrderedDict[uuid.UUID, None] = OrderedDict()

    async def _load(self, ids: Iterable[uuid.UUID]) -> list[CalculationSnapshot]:
        async with read_only(self.services.session_factory) as session:
            repo = CalculationRepository(session)
            rows = [await repo.get(calculation_id) for calculation_id in ids]
        return [row.to_snapshot() for row in rows if row is not None and can_see(self.user, row)]

    async def _load_recent(self) -> list[CalculationSnapshot]:
        async with read_only(self.services.session_factory) as session:
            page = await CalculationRepository(session).list_for_owner(
                self.user.id, first=RESYNC_RECENT
            )
        return [row.to_snapshot() for row in page.items]

    def _shown(self, snapshot: CalculationSnapshot, state: WatchState) -> CalculationSnapshot:
        if state.done:
            self.moving.pop(snapshot.id, None)
            self.finished[snapshot.id] = None
            while len(self.finished) > MAX_TRACKED:
                self.finished.popitem(last=False)
        else:
            self.moving[snapshot.id] = state
            self.moving.move_to_end(snapshot.id)
            while len(self.moving) > MAX_TRACKED:
                self.moving.popitem(last=False)
        return snapshot

    def _take_row(self, row: CalculationSnapshot) -> CalculationSnapshot | None:
        """``row`` read from the database: to be shown when it is new or newer."""
        if row.id in self.finished:
            return None
        state = self.moving.get(row.id)
        if state is None:
            state = WatchState(row)
            return self._shown(row, state)
        update = state.refresh(row)
        return self._shown(update, state) if update is not None else None

    async def reread(self) -> list[CalculationSnapshot]:
        """Read again what may have changed unseen: the calculations still moving, and
        the newest ones (started and maybe finished while events were lost)."""
        rows = await self._load(list(self.moving))
        known = {row.id for row in rows}
        rows += [row for row in await self._load_recent() if row.id not in known]
        rows.sort(key=lambda row: row.created_at)
        return [update for row in rows if (update := self._take_row(row)) is not None]

    async def take(self, event: CalculationEvent) -> list[CalculationSnapshot]:
        if event.id in self.finished:
            return []
        state = self.moving.get(event.id)
        if state is None or state.needs_read(event):
            # First sight, a result too big for the bus, or a run whose start this
            # feed never saw: the database has the truth.
            return [
                update
                for row in await self._load([event.id])
                if (update := self._take_row(row)) is not None
            ]
        update = state.apply(event)
        return [self._shown(update, state)] if update is not None else []


def _matches(
    snapshot: CalculationSnapshot, kind: str | None, status: CalculationStatus | None
) -> bool:
    return (kind is None or snapshot.kind == kind) and (status is None or snapshot.status is status)


async def watch_own(
    services: ServiceContainer,
    user: User,
    *,
    kind: str | None = None,
    status: CalculationStatus | None = None,
) -> AsyncIterator[CalculationSnapshot]:
    """Each change to one of ``user``'s calculations (matching ``kind`` and ``status``).
    Sends no first snapshot and does not complete until the subscription lifetime cap
    (``subscription_max_seconds``)."""
    check_kind(kind)
    feed = _Feed(services, user)
    deadline = time.monotonic() + services.limits.subscription_max_seconds
    async with services.bus.subscribe(user_events_key(user.id)) as subscription:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # No periodic re-read (an idle list costs no query): what could be missed
            # (a lost Redis connection, a full mailbox) arrives as a resync.
            delivery: Delivery | None = await subscription.get(timeout=remaining)
            if delivery is None:
                continue  # the subscription's lifetime is over (checked above)
            if delivery is RESYNC:
                updates = await feed.reread()
            else:
                updates = await feed.take(delivery)
            for update in updates:
                if _matches(update, kind, status):
                    yield update
