"""Shards of a split calculation. Like the calculation's own claim and finish, every
change is a conditional update: a duplicate message, a takeover after a missed heartbeat
and a cancel never both win, and of two shards finishing at once only one combines."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Integer, Table, and_, exists, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crunchql.db.models import (
    ACTIVE_STATUSES,
    Calculation,
    CalculationShard,
    CalculationStatus,
    ShardStatus,
)

_CALCULATION_ACTIVE = Calculation.status.in_(sorted(ACTIVE_STATUSES))


@dataclass(frozen=True)
class ShardProgress:
    """The calculation after a shard stored its progress (what a progress event shows)."""

    attempts: int
    version: int
    progress: float
    shards: int
    shards_done: int


@dataclass(frozen=True)
class ShardFinish:
    """A shard's partial result was stored. ``partials`` (in shard order) is set for the
    one shard whose transaction stored the last partial: it must combine them."""

    calculation: Calculation
    partials: list[dict[str, Any]] | None


def _greatest(session: AsyncSession, column: Any, value: Any) -> Any:
    # SQLite's two-argument max() is PostgreSQL's greatest().
    if session.get_bind().dialect.name == "sqlite":
        return func.max(column, value)
    return func.greatest(column, value)


def _least(session: AsyncSession, column: Any, value: Any) -> Any:
    if session.get_bind().dialect.name == "sqlite":
        return func.min(column, value)
    return func.least(column, value)


class ShardRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def split(
        self, calculation_id: uuid.UUID, worker_id: str, shards: int
    ) -> Calculation | None:
        """Split a run this worker has claimed into ``shards`` QUEUED shards (once: a
        calculation already split keeps its shards). None when it is no longer this
        worker's run."""
        table = cast(Table, Calculation.__table__)
        row = (
            (
                await self.session.execute(
                    update(table)
                    .where(
                        table.c.id == calculation_id,
                        table.c.status == CalculationStatus.RUNNING,
                        table.c.worker_id == worker_id,
                        table.c.shards == 1,
                    )
                    .values(shards=shards, shards_done=0, device="cpu", version=table.c.version + 1)
                    .returning(*table.c)
                )
            )
            .mappings()
            .one_or_none()
        )
        if row is None:
            return None
        shard_table = cast(Table, CalculationShard.__table__)
        await self.session.execute(
            insert(shard_table),
            [
                {
                    "calculation_id": calculation_id,
                    "shard": shard,
                    "status": ShardStatus.QUEUED,
                    "progress": 0.0,
                    "attempts": 0,
                }
                for shard in range(shards)
            ],
        )
        return Calculation(**row)

    async def waiting(self, calculation_id: uuid.UUID, stale_before: datetime) -> list[int]:
        """Shards no live worker holds: QUEUED, or RUNNING without a recent heartbeat."""
        statement = (
            select(CalculationShard.shard)
            .where(
                CalculationShard.calculation_id == calculation_id,
                or_(
                    CalculationShard.status == ShardStatus.QUEUED,
                    and_(
                        CalculationShard.status == ShardStatus.RUNNING,
                        CalculationShard.heartbeat_at < stale_before,
                    ),
                ),
            )
            .order_by(CalculationShard.shard)
        )
        return list((await self.session.execute(statement)).scalars())

    async def claim(
        self,
        calculation_id: uuid.UUID,
        shard: int,
        worker_id: str,
        now: datetime,
        stale_before: datetime,
        *,
        device: str = "cpu",
    ) -> Calculation | None:
        """QUEUED → RUNNING (or take over a stale RUNNING shard) while the calculation is
        active; the calculation's row, or None when there is nothing to run. A shard
        claimed by a GPU worker marks the calculation's device "gpu" (for good: part of
        it ran on a GPU); CPU shards leave the "cpu" of the split as it is."""
        shard_table = cast(Table, CalculationShard.__table__)
        calculation_active = exists().where(
            Calculation.id == shard_table.c.calculation_id, _CALCULATION_ACTIVE
        )
        attempts = (
            await self.session.execute(
                update(shard_table)
                .where(
                    shard_table.c.calculation_id == calculation_id,
                    shard_table.c.shard == shard,
                    or_(
                        shard_table.c.status == ShardStatus.QUEUED,
                        and_(
                            shard_table.c.status == ShardStatus.RUNNING,
                            or_(
                                shard_table.c.heartbeat_at.is_(None),
                                shard_table.c.heartbeat_at < stale_before,
                            ),
                        ),
                    ),
                    calculation_active,
                )
                .values(
                    status=ShardStatus.RUNNING,
                    worker_id=worker_id,
                    heartbeat_at=now,
                    attempts=shard_table.c.attempts + 1,
                )
                .returning(shard_table.c.attempts)
            )
        ).scalar_one_or_none()
        if attempts is None:
            return None
        # The calculation's attempts: the most times any part of it was started, so a
        # shard run again after its worker died (or stopped) counts as a restart.
        table = cast(Table, Calculation.__table__)
        row = (
            (
                await self.session.execute(
                    update(table)
                    .where(table.c.id == calculation_id)
                    .values(
                        attempts=_greatest(self.session, table.c.attempts, attempts),
                        version=table.c.version + (table.c.attempts < attempts).cast(Integer),
                        **({"device": "gpu"} if device == "gpu" else {}),
                    )
                    .returning(*table.c)
                )
            )
            .mappings()
            .one()
        )
        return Calculation(**row)

    def _owned(self, calculation_id: uuid.UUID, shard: int, worker_id: str) -> Any:
        return and_(
            CalculationShard.calculation_id == calculation_id,
            CalculationShard.shard == shard,
            CalculationShard.status == ShardStatus.RUNNING,
            CalculationShard.worker_id == worker_id,
        )

    async def record_progress(
        self, calculation_id: uuid.UUID, shard: int, worker_id: str, *, progress: float,
        now: datetime,
    ) -> ShardProgress | None:  # fmt: skip
        """Store a shard's progress and the calculation's (the mean over its shards), and
        beat for both. None when the shard is no longer this worker's or the calculation
        is no longer active (cancelled, failed): the shard must stop."""
        result = await self.session.execute(
            update(CalculationShard)
            .where(self._owned(calculation_id, shard, worker_id))
            .values(
                progress=_greatest(self.session, CalculationShard.progress, progress),
                heartbeat_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if (result.rowcount or 0) != 1:  # type: ignore[attr-defined]
            return None
        total = (
            select(func.sum(CalculationShard.progress))
            .where(CalculationShard.calculation_id == calculation_id)
            .scalar_subquery()
        )
        table = cast(Table, Calculation.__table__)
        share = _least(self.session, total / table.c.shards, 1.0)
        row = (
            await self.session.execute(
                update(table)
                .where(table.c.id == calculation_id, table.c.status.in_(sorted(ACTIVE_STATUSES)))
                .values(
                    progress=_greatest(self.session, table.c.progress, share),
                    heartbeat_at=now,
                    version=table.c.version + 1,
                )
                .returning(
                    table.c.attempts,
                    table.c.version,
                    table.c.progress,
                    table.c.shards,
                    table.c.shards_done,
                )
            )
        ).one_or_none()
        if row is None:
            return None
        return ShardProgress(*row)

    async def finish(
        self,
        calculation_id: uuid.UUID,
        shard: int,
        worker_id: str,
        *,
        partial: dict[str, Any],
        now: datetime,
    ) -> ShardFinish | None:
        """Store the shard's partial result and count it. None when the shard is no longer
        this worker's (taken over, or already stored) or the calculation is no longer
        active.

        The count is a conditional ``UPDATE … shards_done + 1``, which row-locks the
        calculation until commit: two shards finishing at once are counted one after the
        other, and only the transaction that reaches ``shards`` reads every partial.
        """
        result = await self.session.execute(
            update(CalculationShard)
            .where(self._owned(calculation_id, shard, worker_id))
            .values(status=ShardStatus.DONE, partial=partial, progress=1.0, finished_at=now)
            .execution_options(synchronize_session=False)
        )
        if (result.rowcount or 0) != 1:  # type: ignore[attr-defined]
            return None
        table = cast(Table, Calculation.__table__)
        total = (
            select(func.sum(CalculationShard.progress))
            .where(CalculationShard.calculation_id == calculation_id)
            .scalar_subquery()
        )
        share = _least(self.session, total / table.c.shards, 1.0)
        row = (
            (
                await self.session.execute(
                    update(table)
                    .where(
                        table.c.id == calculation_id,
                        table.c.status.in_(sorted(ACTIVE_STATUSES)),
                        table.c.shards_done < table.c.shards,
                    )
                    .values(
                        shards_done=table.c.shards_done + 1,
                        progress=_greatest(self.session, table.c.progress, share),
                        heartbeat_at=now,
                        version=table.c.version + 1,
                    )
                    .returning(*table.c)
                )
            )
            .mappings()
            .one_or_none()
        )
        if row is None:
            return None
        calculation = Calculation(**row)
        if calculation.shards_done < calculation.shards:
            return ShardFinish(calculation, None)
        statement = (
            select(CalculationShard.shard, CalculationShard.status, CalculationShard.partial)
            .where(CalculationShard.calculation_id == calculation_id)
            .order_by(CalculationShard.shard)
        )
        rows = list((await self.session.execute(statement)).all())
        if len(rows) != calculation.shards or any(r.status != ShardStatus.DONE for r in rows):
            raise RuntimeError(f"calculation {calculation_id}: shard count out of step")
        return ShardFinish(calculation, [r.partial for r in rows])

    async def release(self, calculation_id: uuid.UUID, shard: int, worker_id: str) -> bool:
        """RUNNING → QUEUED for a shard this worker holds (shutdown, transient failure)."""
        result = await self.session.execute(
            update(CalculationShard)
            .where(self._owned(calculation_id, shard, worker_id))
            .values(status=ShardStatus.QUEUED, worker_id=None)
            .execution_options(synchronize_session=False)
        )
        return (result.rowcount or 0) == 1  # type: ignore[attr-defined]

    async def release_running(self, calculation_id: uuid.UUID) -> None:
        """RUNNING → QUEUED for every shard of the calculation: the caller knows their
        workers are gone (the embedded mode after a restart, a takeover)."""
        await self.session.execute(
            update(CalculationShard)
            .where(
                CalculationShard.calculation_id == calculation_id,
                CalculationShard.status == ShardStatus.RUNNING,
            )
            .values(status=ShardStatus.QUEUED, worker_id=None)
            .execution_options(synchronize_session=False)
        )

    async def release_stale(self, *, stale_before: datetime) -> list[tuple[uuid.UUID, int]]:
        """RUNNING → QUEUED for shards of active calculations whose worker stopped beating
        (killed, frozen): they are re-sent, and only they are re-run."""
        table = cast(Table, CalculationShard.__table__)
        calculation_active = exists().where(
            Calculation.id == table.c.calculation_id, _CALCULATION_ACTIVE
        )
        statement = (
            update(table)
            .where(
                table.c.status == ShardStatus.RUNNING,
                or_(table.c.heartbeat_at.is_(None), table.c.heartbeat_at < stale_before),
                calculation_active,
            )
            .values(status=ShardStatus.QUEUED, worker_id=None)
            .returning(table.c.calculation_id, table.c.shard)
        )
        return [(row[0], row[1]) for row in (await self.session.execute(statement)).all()]
