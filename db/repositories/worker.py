from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crunchql.db.models import Worker


class WorkerRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def beat(
        self, worker_id: str, hostname: str, pid: int, now: datetime, *, device: str = "cpu"
    ) -> None:
        result = await self.session.execute(
            update(Worker).where(Worker.id == worker_id).values(last_seen_at=now)
        )
        if (result.rowcount or 0) == 0:  # type: ignore[attr-defined]
            self.session.add(
                Worker(
                    id=worker_id,
                    hostname=hostname,
                    pid=pid,
                    started_at=now,
                    last_seen_at=now,
                    device=device,
                )
            )
            await self.session.flush()

    async def remove(self, worker_id: str) -> None:
        await self.session.execute(delete(Worker).where(Worker.id == worker_id))

    async def count_alive(
        self, now: datetime, stale_after: timedelta, *, device: str | None = None
    ) -> int:
        """Workers with a heartbeat within ``stale_after``; only those on ``device``
        ("cpu", "gpu") when it is given."""
        statement = select(func.count()).where(Worker.last_seen_at >= now - stale_after)
        if device is not None:
            statement = statement.where(Worker.device == device)
        return int((await self.session.execute(statement)).scalar_one())

    async def prune(self, now: datetime, older_than: timedelta) -> None:
        await self.session.execute(delete(Worker).where(Worker.last_seen_at < now - older_than))
