"""``myCalculationUpdates``: every change to any of the caller's calculations, on one
subscription, for a list view.

It listens on the caller's own key of the bus (``user_events_key``), so an event costs a
dictionary lookup per API process whatever the number of users connected. Each event
names one calculation; the feed keeps the rows it has seen (bounded, least recently
changed dropped first) and reads a row from the database only the first time it sees
it, on a ``reload`` or ``resync`` marker, or when the bus has been quiet for a while
(a lost event is recovered, as ``watch`` does).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from crunchql.db.engine import read_only
from crunchql.db.models import Calculation, CalculationStatus, User
from crunchql.db.repositories import CalculationRepository
from crunchql.pubsub.bus import Event
from crunchql.pubsub.channels import user_events_key
from crunchql.services.calculations import (
    IDLE_RECHECK_SECONDS,
    STATUS_RANK,
    apply_snapshot,
    can_see,
    check_kind,
    parse_id,
)
from crunchql.services.container import Services

MAX_TRACKED = 512  # rows kept per subscription (a list view shows far fewer)
RESYNC_RECENT = 50  # on a resync, the newest calculations are re-read as well

Update = tuple[Calculation, Mapping[str, Any] | None]


@dataclass
class _Tracked:
    """A calculation as last sent: its row and the (rank, progress, attempts, version)
    it was sent with, so that a stale or duplicate event is not sent again."""

    row: Calculation
    progress: float
    overrides: dict[str, Any] | None = None

    @classmethod
    def of(cls, row: Calculation, reported: float) -> _Tracked:
        """``row`` shown with never less progress than already ``reported``."""
        progress = max(reported, row.progress)
        return cls(row, progress, {"progress": progress} if progress != row.progress else None)

    @property
    def rank(self) -> int:
        return STATUS_RANK[self.row.status]

    @property
    def key(self) -> tuple[int, float, int, int]:
        return (self.rank, self.progress, self.row.attempts, self.row.version)


def _matches(row: Calculation, kind: str | None, status: CalculationStatus | None) -> bool:
    return (kind is None or row.kind == kind) and (status is None or row.status == status.value)


class _Feed:
    def __init__(
        self,
        services: Services,
        user: User,
        kind: str | None,
        status: CalculationStatus | None,
    ) -> None:
        self.services = services
        self.user = user
        self.kind = kind
        self.status = status
        self.tracked: OrderedDict[uuid.UUID, _Tracked] = OrderedDict()

    async def _load(self, ids: Iterable[uuid.UUID]) -> list[Calculation]:
        async with read_only(self.services.session_factory) as session:
            repo = CalculationRepository(session)
            rows = [await repo.get(calculation_id) for calculation_id in ids]
        return [row for row in rows if row is not None and can_see(self.user, row)]

    async def _load_recent(self) -> list[Calculation]:
        async with read_only(self.services.session_factory) as session:
            page = await CalculationRepository(session).list_for_owner(
                self.user.id, first=RESYNC_RECENT
            )
        return page.items

    def _remember(self, tracked: _Tracked) -> None:
        self.tracked[tracked.row.id] = tracked
        self.tracked.move_to_end(tracked.row.id)
        while len(self.tracked) > MAX_TRACKED:
            self.tracked.popitem(last=False)

    def _take_row(self, row: Calculation) -> Update | None:
        """``row`` read from the database: an update when it is new or newer."""
        seen = self.tracked.get(row.id)
        progress = max(seen.progress if seen else 0.0, row.progress)
        candidate = _Tracked(
            row, progress, {"progress": progress} if progress != row.progress else None
        )
        if seen is not None and candidate.key <= seen.key:
            return None
        self._remember(candidate)
        return row, candidate.overrides

    async def reread(self, *, recent: bool) -> list[Update]:
        """Re-read what may have changed unseen: the rows not yet terminal, and with
        ``recent`` (after a resync) the newest ones too."""
        ids = [cid for cid, t in self.tracked.items() if t.rank < 2]
        rows = await self._load(ids)
        if recent:
            known = {row.id for row in rows}
            rows += [row for row in await self._load_recent() if row.id not in known]
        updates = [update for row in rows if (update := self._take_row(row)) is not None]
        updates.sort(key=lambda update: update[0].created_at)
        return updates

    async def take(self, event: Event) -> list[Update]:
        if event.get("resync"):
            return await self.reread(recent=True)
        calculation_id = parse_id(str(event.get("id")))
        if calculation_id is None:
            return []
        seen = self.tracked.get(calculation_id)
        event_rank = STATUS_RANK.get(str(event.get("status")), -1)
        ahead = event_rank > seen.rank and not event.get("snapshot") if seen else False
        if seen is None or event.get("reload") or ahead:
            # First sight, a result too big for the bus, or a progress event ahead of
            # the status we hold: the database has the truth.
            return [
                update
                for row in await self._load([calculation_id])
                if (update := self._take_row(row)) is not None
            ]
        if event.get("snapshot"):
            if (event_rank, int(event["attempts"]), int(event["version"])) <= (
                seen.rank,
                seen.row.attempts,
                seen.row.version,
            ):
                return []  # stale or duplicate
            row = seen.row
            apply_snapshot(row, event)
            progress = max(seen.progress, row.progress)
            self._remember(
                _Tracked(
                    row, progress, {"progress": progress} if progress != row.progress else None
                )
            )
            return [(row, self.tracked[row.id].overrides)]
        progress = float(event.get("progress", 0.0))
        if event_rank < seen.rank or progress <= seen.progress:
            return []  # stale or duplicate
        seen.row.version = max(seen.row.version, int(event.get("version", 0)))
        overrides = {"progress": progress, "partial_result": event.get("partialResult")}
        self._remember(_Tracked(seen.row, progress, overrides))
        return [(seen.row, overrides)]

    def visible(self, updates: list[Update]) -> list[Update]:
        return [update for update in updates if _matches(update[0], self.kind, self.status)]


async def watch_own(
    services: Services,
    user: User,
    *,
    kind: str | None = None,
    status: CalculationStatus | None = None,
) -> AsyncIterator[Update]:
    """Each change to one of ``user``'s calculations (matching ``kind`` and ``status``),
    as (row, overrides) like ``watch``. Sends no snapshot and does not complete until
    the subscription lifetime cap (``subscription_max_seconds``)."""
    check_kind(kind)
    feed = _Feed(services, user, kind, status)
    deadline = time.monotonic() + services.limits.subscription_max_seconds
    async with services.bus.subscribe(user_events_key(user.id)) as subscription:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            event = await subscription.get(timeout=min(IDLE_RECHECK_SECONDS, remaining))
            if event is None:
                updates = await feed.reread(recent=False)  # a quiet spell: check the rows
            else:
                updates = await feed.take(event)
            for update in feed.visible(updates):
                yield update
            for row, _ in updates:
                if STATUS_RANK[row.status] == 2:
                    # Sent (the resolver has copied it): a finished row can only be
                    # compared from now on, so its result (a PNG of megabytes) is not kept.
                    row.result = row.partial_result = None
