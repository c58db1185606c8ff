"""Calculations: every status change is a conditional update, so that two workers, a
duplicate message and a concurrent cancel can never both win."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from sqlalchemy.sql import Executable

from crunchql.core.keyed_locks import KeyedLocks
from crunchql.db.batches import BatchedStatement
from crunchql.db.driver import DriverStatement
from crunchql.db.engine import autocommit_engine, is_sqlite, single_statement
from crunchql.db.models import ACTIVE_STATUSES, Calculation, CalculationStatus, User

_IS_ACTIVE = Calculation.status.in_(sorted(ACTIVE_STATUSES))

# --- the hot paths' statements, built once ----------------------------------------------
#
# Submit (lock, count, insert), claim, progress and finish run on every calculation.
# Built once with bind parameters and executed on the session's connection (Core), they
# skip the ORM's per-execution compile state and the cache-key generation of a freshly
# built statement: the profile of a tiny-job flood had these at about a third of the
# API's and the worker's CPU. Parameter names start with ``p_``: an UPDATE reserves the
# column names for its SET clause.
_T = cast(Table, Calculation.__table__)
_U = cast(Table, User.__table__)
_ACTIVE = sorted(ACTIVE_STATUSES)


def _param(name: str, column: Any) -> Any:
    return bindparam(name, type_=column.type)


def _rows_of(function: str, *params: Any) -> DriverStatement:
    """``SELECT <calculations' columns> FROM function(:p1, :p2, ...)`` for one of the
    PostgreSQL functions of the migrations that return calculations rows, its
    arguments the typed bind parameters ``params``, in order; each runs on every
    calculation, so on the driver connection (``db.driver``)."""
    return DriverStatement(
        text(
            # The columns by name, in the model's order: .columns() matches them by position.
            f"SELECT {', '.join(column.name for column in _T.c)} FROM {function}("  # noqa: S608 - our own names
            + ", ".join(f":{param.key}" for param in params)
            + ")"
        )
        .bindparams(*params)
        .columns(*_T.c),
        _T,
    )


# The owner of a calculation, locked, in one round trip (the claim under a running limit).
_LOCK_OWNER_OF = (
    select(_U.c.id)
    .where(
        _U.c.id == select(_T.c.owner_id).where(_T.c.id == _param("p_id", _T.c.id)).scalar_subquery()
    )
    .with_for_update()
)
_COUNT_ACTIVE = (
    select(func.count())
    .select_from(_T)
    .where(_T.c.owner_id == _param("p_owner", _T.c.owner_id), _T.c.status.in_(_ACTIVE))
)


def _live_runs_of(owner: Any, *, besides: Any = None) -> Any:
    """How many calculations of ``owner`` are RUNNING with a heartbeat at or after the
    ``p_alive_after`` parameter (a scalar subquery; ``besides``: leave that id out)."""
    other = _T.alias("other")
    conditions = [
        other.c.owner_id == owner,
        other.c.status == CalculationStatus.RUNNING,
        other.c.heartbeat_at >= _param("p_alive_after", other.c.heartbeat_at),
    ]
    if besides is not None:
        conditions.append(other.c.id != besides)
    return select(func.count()).select_from(other).where(*conditions).scalar_subquery()


# What a new calculation's row is given (the rest keeps its default).
_NEW_COLUMNS = ("id", "owner_id", "kind", "input", "status", "progress", "created_at",
                "attempts", "version")  # fmt: skip


def _new_row(
    owner_id: uuid.UUID, kind: str, params: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """The values of a new QUEUED calculation, as the statements' parameters: ``p_``
    and the names of _NEW_COLUMNS."""
    values = (uuid.uuid4(), owner_id, kind, params, CalculationStatus.QUEUED, 0.0, now, 0, 0)
    return {f"p_{name}": value for name, value in zip(_NEW_COLUMNS, values, strict=True)}


# A new QUEUED row, as it is (the submit without a cap).
_INSERT_NEW = DriverStatement(
    insert(_T)
    .values({name: _param(f"p_{name}", _T.c[name]) for name in _NEW_COLUMNS})
    .returning(*_T.c),
    _T,
)
# The submit's count and insert in one statement: a new QUEUED row only while the owner
# has fewer than p_max_active QUEUED or RUNNING (SQLite; PostgreSQL: _SUBMIT_CAPPED).
_INSERT_UNDER_LIMIT = DriverStatement(
    insert(_T)
    .from_select(
        list(_NEW_COLUMNS),
        select(*(_param(f"p_{name}", _T.c[name]) for name in _NEW_COLUMNS)).where(
            _COUNT_ACTIVE.scalar_subquery() < bindparam("p_max_active")
        ),
    )
    .returning(*_T.c),
    _T,
)
# The same on PostgreSQL with the owner's lock first, in one round trip (migration 0008).
_SUBMIT_CAPPED = _rows_of(
    "crunchql_submit_capped",
    *(_param(f"p_{name}", _T.c[name]) for name in _NEW_COLUMNS),
    bindparam("p_max_active", type_=_T.c.attempts.type),
)
_SELECT_ONE = DriverStatement(select(_T).where(_T.c.id == _param("p_id", _T.c.id)), _T)
_OWNED_RUN = and_(
    _T.c.id == _param("p_id", _T.c.id),
    _T.c.status == CalculationStatus.RUNNING,
    _T.c.worker_id == _param("p_worker", _T.c.worker_id),
)


def _claim_statement(with_limit: bool) -> Executable:
    condition = or_(
        _T.c.status == CalculationStatus.QUEUED,
        and_(
            _T.c.status == CalculationStatus.RUNNING,
            or_(
                _T.c.heartbeat_at.is_(None),
                _T.c.heartbeat_at < _param("p_stale_before", _T.c.heartbeat_at),
            ),
        ),
    )
    if with_limit:
        # Fewer than p_max_running OTHER live runs of the same owner (a correlated count).
        live = _live_runs_of(_T.c.owner_id, besides=_T.c.id)
        condition = and_(condition, live < bindparam("p_max_running"))
    now = _param("p_now", _T.c.started_at)
    return (
        update(_T)
        .where(_T.c.id == _param("p_id", _T.c.id), condition)
        .values(
            status=CalculationStatus.RUNNING,
            started_at=now,
            attempts=_T.c.attempts + 1,
            worker_id=_param("p_worker", _T.c.worker_id),
            heartbeat_at=now,
            version=_T.c.version + 1,
            error=None,
            parked_at=None,
            # A split calculation keeps what its shards say (ShardRepository.claim).
            device=case((_T.c.shards > 1, _T.c.device), else_=_param("p_device", _T.c.device)),
        )
        .returning(*_T.c)
    )


_CLAIM = {limit: DriverStatement(_claim_statement(limit), _T) for limit in (False, True)}

# A claim refused at the owner's running limit leaves the row QUEUED and marks it parked.
_PARK = (
    update(_T)
    .where(_T.c.id == _param("p_id", _T.c.id), _T.c.status == CalculationStatus.QUEUED)
    .values(parked_at=_param("p_now", _T.c.parked_at))
    .returning(_T.c.owner_id)
)


def _unpark_statement(with_limit: bool) -> Executable:
    """The owner's oldest parked calculations, up to p_limit, no longer parked (their
    ids returned, to be sent again). ``parked_at IS NOT NULL`` is checked again on the
    row itself, so two finishing runs racing for the same rows each get different ones
    (PostgreSQL re-checks a locked row's condition; SQLite has one writer). With a limit,
    nothing unless the owner has fewer than p_max_running live runs now."""
    oldest = (
        select(_T.c.id)
        .where(
            _T.c.owner_id == _param("p_owner", _T.c.owner_id),
            _T.c.status == CalculationStatus.QUEUED,
            _T.c.parked_at.is_not(None),
        )
        .order_by(_T.c.created_at, _T.c.id)
        .limit(bindparam("p_limit"))
    )
    condition = and_(
        _T.c.id.in_(oldest),
        _T.c.status == CalculationStatus.QUEUED,
        _T.c.parked_at.is_not(None),
    )
    if with_limit:
        live = _live_runs_of(_param("p_owner", _T.c.owner_id))
        condition = and_(condition, live < bindparam("p_max_running"))
    return update(_T).where(condition).values(parked_at=None).returning(_T.c.id)


_UNPARK = {False: _unpark_statement(False), True: _unpark_statement(True)}

# PostgreSQL: the claim under a running cap (owner's lock, conditional UPDATE, or park) as
# one call of the function of migration 0007.
_CLAIM_CAPPED = _rows_of(
    "crunchql_claim_capped",
    _param("p_id", _T.c.id),
    _param("p_worker", _T.c.worker_id),
    _param("p_now", _T.c.started_at),
    _param("p_stale_before", _T.c.heartbeat_at),
    _param("p_alive_after", _T.c.heartbeat_at),
    _param("p_max_running", _T.c.attempts),
    _param("p_device", _T.c.device),
)


def _finish_statement(succeeded: bool) -> Executable:
    now = _param("p_now", _T.c.finished_at)
    values: dict[str, Any] = {
        "status": _param("p_status", _T.c.status),
        "finished_at": now,
        "result": _param("p_result", _T.c.result),
        "error": _param("p_error", _T.c.error),
        "heartbeat_at": now,
        "version": _param("p_version", _T.c.version),
    }
    if succeeded:
        values["progress"] = 1.0
        values["partial_result"] = None
    return update(_T).where(_OWNED_RUN).values(**values).returning(*_T.c)


_FINISH = {done: DriverStatement(_finish_statement(done), _T) for done in (False, True)}

# A quick run (workers.runner): QUEUED straight to SUCCEEDED, never claimed. Only a row
# still waiting for its first run (not parked, not split) of the kind and input the run
# computed: anything else (cancelled, running elsewhere, a stale run to take over, a
# parked row) is left to the ordinary claim.
_QUICK_NOW = _param("p_now", _T.c.finished_at)
_FINISH_QUEUED = DriverStatement(
    update(_T)
    .where(
        _T.c.id == _param("p_id", _T.c.id),
        _T.c.status == CalculationStatus.QUEUED,
        _T.c.parked_at.is_(None),
        _T.c.shards == 1,
        _T.c.kind == _param("p_kind", _T.c.kind),
        _T.c.input == _param("p_input", _T.c.input),
    )
    .values(
        status=CalculationStatus.SUCCEEDED,
        started_at=_param("p_started", _T.c.started_at),
        finished_at=_QUICK_NOW,
        heartbeat_at=_QUICK_NOW,
        attempts=_T.c.attempts + 1,
        worker_id=_param("p_worker", _T.c.worker_id),
        device=_param("p_device", _T.c.device),
        version=_T.c.version + 1,
        progress=1.0,
        partial_result=None,
        result=_param("p_result", _T.c.result),
        error=None,
    )
    .returning(*_T.c),
    _T,
)

# PostgreSQL: the finish and the release of the owner's parked calculations (under a
# running cap) as one call of the function of migration 0009.
_FINISH_RUN = _rows_of(
    "crunchql_finish_run",
    _param("p_id", _T.c.id),
    _param("p_worker", _T.c.worker_id),
    _param("p_owner", _T.c.owner_id),
    _param("p_status", _T.c.status),
    _param("p_now", _T.c.finished_at),
    _param("p_result", _T.c.result),
    _param("p_error", _T.c.error),
    _param("p_version", _T.c.version),
    bindparam("p_succeeded", type_=Boolean()),
    bindparam("p_wake", type_=_T.c.attempts.type),
)


def _progress_statement(dialect: str) -> Executable:
    # SQLite's two-argument max() is PostgreSQL's greatest().
    greatest = func.max if dialect == "sqlite" else func.greatest
    return (
        update(_T)
        .where(_OWNED_RUN)
        .values(
            progress=greatest(_T.c.progress, _param("p_progress", _T.c.progress)),
            partial_result=_param("p_partial", _T.c.partial_result),
            version=greatest(_T.c.version, _param("p_version", _T.c.version)),
            heartbeat_at=_param("p_now", _T.c.heartbeat_at),
        )
    )


_PROGRESS: dict[str, Executable] = {}


@dataclass(frozen=True)
class CalculationPage:
    items: list[Calculation]
    has_next_page: bool


class CalculationRepository:
    """Calculations' reads and writes. Given an ORM session (``unit_of_work``,
    ``read_only``), every method; given a Core connection (``single_statement``), the
    methods that run Core statements: the hot paths (submit, claim, progress, finish)
    and the other status changes."""

    def __init__(self, bind: AsyncSession | AsyncConnection) -> None:
        self._bind = bind

    @property
    def session(self) -> AsyncSession:
        """The ORM session, for the methods that load or query mapped objects."""
        if not isinstance(self._bind, AsyncSession):
            raise TypeError("this method needs an ORM session, not a Core connection")
        return self._bind

    async def _core(self) -> AsyncConnection:
        """The connection (a session's, with its transaction), for the Core statements."""
        if isinstance(self._bind, AsyncConnection):
            return self._bind
        return await self._bind.connection()

    async def _one(self, statement: DriverStatement, values: dict[str, Any]) -> Calculation | None:
        """The one calculations row ``statement`` returns, detached; None for none."""
        rows = await statement.fetch(await self._core(), values)
        return Calculation(**rows[0]) if rows else None

    def _dialect(self) -> str:
        if isinstance(self._bind, AsyncConnection):
            return self._bind.dialect.name
        return self._bind.get_bind().dialect.name

    async def create(
        self, *, owner_id: uuid.UUID, kind: str, params: dict[str, Any], now: datetime
    ) -> Calculation:
        """A QUEUED calculation, by one INSERT (the submit path is hot)."""
        calculation = await self._one(_INSERT_NEW, _new_row(owner_id, kind, params, now))
        assert calculation is not None  # an INSERT ... RETURNING without a condition
        return calculation

    async def create_within_limit(
        self,
        *,
        owner_id: uuid.UUID,
        kind: str,
        params: dict[str, Any],
        now: datetime,
        max_active: int,
    ) -> Calculation | None:
        """A QUEUED calculation, unless the owner already has ``max_active`` QUEUED or
        RUNNING (None): the count and the INSERT in one statement.

        On PostgreSQL one round trip that commits by itself (run it in
        ``single_statement``): the function of migration 0008 takes the owner's row
        lock, so parallel submits (any API process) cannot all pass the count. On
        SQLite the statement alone, atomic there; the caller serialises one owner's
        submits of the process (the embedded mode has one)."""
        values = {**_new_row(owner_id, kind, params, now), "p_max_active": max_active}
        if self._dialect() == "postgresql":
            return await self._one(_SUBMIT_CAPPED, values)
        return await self._one(_INSERT_UNDER_LIMIT, {**values, "p_owner": owner_id})

    async def read(self, calculation_id: uuid.UUID) -> Calculation | None:
        """The row as it stands, detached (a snapshot, not tracked by the session), by a
        prepared Core SELECT: what a subscription reads when it starts or resyncs."""
        return await self._one(_SELECT_ONE, {"p_id": calculation_id})

    async def get(self, calculation_id: uuid.UUID) -> Calculation | None:
        return await self.session.get(Calculation, calculation_id, populate_existing=True)

    async def count_active(self, owner_id: uuid.UUID) -> int:
        result = await (await self._core()).execute(_COUNT_ACTIVE, {"p_owner": owner_id})
        return int(result.scalar_one())

    async def count_for_owner(
        self,
        owner_id: uuid.UUID,
        *,
        status: CalculationStatus | None = None,
        kind: str | None = None,
    ) -> int:
        statement = select(func.count()).where(Calculation.owner_id == owner_id)
        if status is not None:
            statement = statement.where(Calculation.status == status)
        if kind is not None:
            statement = statement.where(Calculation.kind == kind)
        return int((await self.session.execute(statement)).scalar_one())

    async def list_for_owner(
        self,
        owner_id: uuid.UUID,
        *,
        first: int,
        after: tuple[datetime, uuid.UUID] | None = None,
        status: CalculationStatus | None = None,
    ) -> CalculationPage:
        """Newest first, keyset-paginated on (created_at, id)."""
        statement = select(Calculation).where(Calculation.owner_id == owner_id)
        if status is not None:
            statement = statement.where(Calculation.status == status)
        if after is not None:
            created_at, last_id = after
            statement = statement.where(
                or_(
                    Calculation.created_at < created_at,
                    and_(Calculation.created_at == created_at, Calculation.id < last_id),
                )
            )
        statement = statement.order_by(Calculation.created_at.desc(), Calculation.id.desc())
        rows = list((await self.session.execute(statement.limit(first + 1))).scalars())
        return CalculationPage(items=rows[:first], has_next_page=len(rows) > first)

    async def list_all(
        self,
        *,
        first: int,
        after: tuple[datetime, uuid.UUID] | None = None,
        status: CalculationStatus | None = None,
        kind: str | None = None,
        owner_id: uuid.UUID | None = None,
    ) -> CalculationPage:
        """Every owner's calculations (for an ADMIN), newest first, with filters."""
        statement = select(Calculation)
        if owner_id is not None:
            statement = statement.where(Calculation.owner_id == owner_id)
        if status is not None:
            statement = statement.where(Calculation.status == status.value)
        if kind is not None:
            statement = statement.where(Calculation.kind == kind)
        if after is not None:
            created_at, last_id = after
            statement = statement.where(
                or_(
                    Calculation.created_at < created_at,
                    and_(Calculation.created_at == created_at, Calculation.id < last_id),
                )
            )
        statement = statement.order_by(Calculation.created_at.desc(), Calculation.id.desc())
        rows = list((await self.session.execute(statement.limit(first + 1))).scalars())
        return CalculationPage(items=rows[:first], has_next_page=len(rows) > first)

    async def _update_returning(
        self, calculation_id: uuid.UUID, condition: Any, values: dict[str, Any]
    ) -> Calculation | None:
        # A Core UPDATE … RETURNING: one round trip, none of the ORM's bulk-update
        # bookkeeping (these run on every claim, finish and cancel). The row comes back
        # as a detached Calculation: a snapshot, not tracked by the session.
        table = cast(Table, Calculation.__table__)
        statement = (
            update(table)
            .where(table.c.id == calculation_id, condition)
            .values(**values)
            .returning(*table.c)
        )
        row = (await (await self._core()).execute(statement)).mappings().one_or_none()
        return Calculation(**row) if row is not None else None

    async def claim(
        self,
        calculation_id: uuid.UUID,
        worker_id: str,
        now: datetime,
        stale_before: datetime,
        *,
        max_running: int | None = None,
        alive_after: datetime | None = None,
        device: str = "cpu",
    ) -> Calculation | None:
        """QUEUED → RUNNING, or take over a RUNNING one whose worker stopped beating;
        ``device`` ("cpu", "gpu": what the claiming worker runs on) is stored with it.

        None when the calculation is finished, cancelled or alive elsewhere: a duplicate
        or late message then does nothing. With ``max_running``, also None (and the row
        left QUEUED, untouched) while its owner already has that many runs alive
        (heartbeat after ``alive_after``): the caller drops the message and the owner's
        next finishing run sends it again (:meth:`park`, then :meth:`take_parked`).
        """
        params: dict[str, Any] = {
            "p_id": calculation_id,
            "p_worker": worker_id,
            "p_now": now,
            "p_stale_before": stale_before,
            "p_device": device,
        }
        if max_running is not None:
            if self._dialect() != "sqlite":
                # Claims for one owner queue on the owner's row (PostgreSQL), so two
                # workers cannot both count the same free slot; SQLite has one writer,
                # and the UPDATE decides it atomically.
                await (await self._core()).execute(_LOCK_OWNER_OF, {"p_id": calculation_id})
            params["p_alive_after"] = alive_after or stale_before
            params["p_max_running"] = max_running
        return await self._one(_CLAIM[max_running is not None], params)

    async def claim_or_park(
        self,
        calculation_id: uuid.UUID,
        worker_id: str,
        now: datetime,
        stale_before: datetime,
        *,
        max_running: int,
        alive_after: datetime,
        device: str = "cpu",
    ) -> tuple[Calculation | None, uuid.UUID | None]:
        """:meth:`claim` under a running cap, and when the cap refuses it, :meth:`park`:
        ``(claimed row, None)``, ``(None, owner id)`` when parked, ``(None, None)`` when
        there is nothing to run (finished, cancelled, alive on another worker).

        On PostgreSQL one round trip (the function of migration 0007 locks the owner's
        row, then claims or parks) that commits by itself: run it in ``single_statement``.
        On SQLite, the two statements; each is atomic there (one writer), and a run that
        ends between them is caught by the runner's second look after parking.
        """
        if self._dialect() == "postgresql":
            params = {
                "p_id": calculation_id, "p_worker": worker_id, "p_now": now,
                "p_stale_before": stale_before, "p_alive_after": alive_after,
                "p_max_running": max_running, "p_device": device,
            }  # fmt: skip
            calculation = await self._one(_CLAIM_CAPPED, params)
            if calculation is None:
                return None, None
            if calculation.status is CalculationStatus.RUNNING:
                return calculation, None
            return None, calculation.owner_id  # left QUEUED, parked
        claimed = await self.claim(
            calculation_id, worker_id, now, stale_before,
            max_running=max_running, alive_after=alive_after, device=device,
        )  # fmt: skip
        if claimed is not None:
            return claimed, None
        return None, await self.park(calculation_id, now)

    async def park(self, calculation_id: uuid.UUID, now: datetime) -> uuid.UUID | None:
        """After a claim refused at the owner's running limit, in its transaction (which
        holds the owner's row): mark the QUEUED row parked, its message being dropped.
        The owner's id, or None when the row is not QUEUED (finished, cancelled, or
        running elsewhere: nothing waits)."""
        result = await (await self._core()).execute(_PARK, {"p_id": calculation_id, "p_now": now})
        return cast(uuid.UUID | None, result.scalar_one_or_none())

    async def take_parked(
        self,
        owner_id: uuid.UUID,
        limit: int,
        *,
        max_running: int | None = None,
        alive_after: datetime | None = None,
    ) -> list[uuid.UUID]:
        """The owner's oldest parked calculations (up to ``limit``), unparked: the caller
        sends each again. With ``max_running``, none unless the owner has fewer live runs
        (heartbeat after ``alive_after``) than that now. One statement."""
        params: dict[str, Any] = {"p_owner": owner_id, "p_limit": limit}
        if max_running is not None:
            params["p_max_running"] = max_running
            params["p_alive_after"] = alive_after
        statement = _UNPARK[max_running is not None]
        return list((await (await self._core()).execute(statement, params)).scalars())

    def _owned_run(self, worker_id: str) -> Any:
        return and_(
            Calculation.status == CalculationStatus.RUNNING,
            Calculation.worker_id == worker_id,
        )

    async def record_progress(
        self,
        calculation_id: uuid.UUID,
        worker_id: str,
        *,
        progress: float,
        partial_result: dict[str, Any] | None,
        version: int,
        now: datetime,
    ) -> bool:
        """Store progress of a run this worker owns; False when it no longer owns it
        (cancelled, or taken over after a missed heartbeat): the runner must stop."""
        dialect = self._dialect()
        statement = _PROGRESS.get(dialect)
        if statement is None:
            statement = _PROGRESS[dialect] = _progress_statement(dialect)
        params = {
            "p_id": calculation_id,
            "p_worker": worker_id,
            "p_progress": progress,
            "p_partial": partial_result,
            "p_version": version,
            "p_now": now,
        }
        result = await (await self._core()).execute(statement, params)
        return (result.rowcount or 0) == 1

    async def finish(
        self,
        calculation_id: uuid.UUID,
        worker_id: str,
        *,
        status: CalculationStatus,
        now: datetime,
        version: int,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> Calculation | None:
        params = {
            "p_id": calculation_id,
            "p_worker": worker_id,
            "p_status": status,
            "p_now": now,
            "p_result": result,
            "p_error": error,
            "p_version": version,
        }
        return await self._one(_FINISH[status is CalculationStatus.SUCCEEDED], params)

    async def finish_and_wake(
        self,
        calculation_id: uuid.UUID,
        worker_id: str,
        *,
        owner_id: uuid.UUID,
        status: CalculationStatus,
        now: datetime,
        version: int,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        wake: int | None = None,
    ) -> tuple[Calculation | None, list[uuid.UUID]]:
        """:meth:`finish`, then with ``wake`` :meth:`take_parked` of ``owner_id`` (up to
        ``wake`` of the owner's oldest parked calculations, which the caller sends again)
        whether or not the run was still this worker's: ``(finished row or None, ids
        released)``.

        With ``wake`` on PostgreSQL one round trip (the function of migration 0009,
        which takes the owner's lock first, as a capped claim does) that commits by
        itself: run it in ``single_statement``. On SQLite the two statements in turn,
        each committed by itself; without ``wake``, the finish alone (the function is
        called only with one).
        """
        if wake is None or self._dialect() != "postgresql":
            # Without a cap, the plain UPDATE: a PL/pgSQL call costs PostgreSQL more.
            finished = await self.finish(
                calculation_id, worker_id, status=status, now=now, version=version,
                result=result, error=error,
            )  # fmt: skip
            woken = [] if wake is None else await self.take_parked(owner_id, wake)
            return finished, woken
        params = {
            "p_id": calculation_id, "p_worker": worker_id, "p_owner": owner_id,
            "p_status": status, "p_now": now, "p_result": result, "p_error": error,
            "p_version": version, "p_succeeded": status is CalculationStatus.SUCCEEDED,
            "p_wake": wake,
        }  # fmt: skip
        rows = await _FINISH_RUN.fetch(await self._core(), params)
        finished = None
        woken = []
        for row in rows:
            if row["id"] == calculation_id:
                finished = Calculation(**row)
            else:
                woken.append(row["id"])
        return finished, woken

    async def complete(
        self, calculation_id: uuid.UUID, *, result: dict[str, Any], now: datetime
    ) -> Calculation | None:
        """SUCCEEDED with ``result`` for a split calculation whose every shard is stored
        (whichever worker stored the last one); None when it is no longer active."""
        return await self._update_returning(
            calculation_id,
            and_(_IS_ACTIVE, Calculation.shards_done == Calculation.shards),
            {
                "status": CalculationStatus.SUCCEEDED,
                "finished_at": now,
                "result": result,
                "error": None,
                "progress": 1.0,
                "partial_result": None,
                "heartbeat_at": now,
                "version": Calculation.version + 1,
            },
        )

    async def release(self, calculation_id: uuid.UUID, worker_id: str) -> bool:
        """RUNNING → QUEUED for a run this worker owns (shutdown, transient failure)."""
        result = await self.session.execute(
            update(Calculation)
            .where(Calculation.id == calculation_id, self._owned_run(worker_id))
            .values(status=CalculationStatus.QUEUED, worker_id=None)
            .execution_options(synchronize_session=False)
        )
        return (result.rowcount or 0) == 1  # type: ignore[attr-defined]

    async def fail_unclaimed(
        self, calculation_id: uuid.UUID, *, error: str, now: datetime
    ) -> Calculation | None:
        """FAILED straight from QUEUED or RUNNING (e.g. retries exhausted, input invalid)."""
        return await self._update_returning(
            calculation_id,
            _IS_ACTIVE,
            {
                "status": CalculationStatus.FAILED,
                "finished_at": now,
                "error": error,
                "version": Calculation.version + 1,
            },
        )

    async def cancel(self, calculation_id: uuid.UUID, now: datetime) -> Calculation | None:
        """QUEUED or RUNNING → CANCELLED; None when it had already finished."""
        return await self._update_returning(
            calculation_id,
            _IS_ACTIVE,
            {
                "status": CalculationStatus.CANCELLED,
                "finished_at": now,
                "version": Calculation.version + 1,
            },
        )

    async def release_stale_runs(self, *, stale_before: datetime) -> list[uuid.UUID]:
        """RUNNING → QUEUED for runs whose worker stopped beating (killed, frozen, cut
        off). Conditional: when several sweepers race, each run is released once."""
        table = cast(Table, Calculation.__table__)
        statement = (
            update(table)
            .where(
                table.c.status == CalculationStatus.RUNNING,
                or_(table.c.heartbeat_at.is_(None), table.c.heartbeat_at < stale_before),
            )
            .values(status=CalculationStatus.QUEUED, worker_id=None)
            .returning(table.c.id)
        )
        return list((await self.session.execute(statement)).scalars())

    async def list_waiting(
        self,
        *,
        created_before: datetime,
        limit: int = 500,
        max_running: int | None = None,
        alive_after: datetime | None = None,
    ) -> list[uuid.UUID]:
        """QUEUED rows older than ``created_before``, oldest first. With
        ``max_running``, only those whose owner could start one now: the others wait
        for their owner's runs to end, and re-sending them would only be refused."""
        statement = select(Calculation.id).where(
            Calculation.status == CalculationStatus.QUEUED,
            Calculation.created_at < created_before,
        )
        params: dict[str, Any] = {}
        if max_running is not None and alive_after is not None:
            live = _live_runs_of(_T.c.owner_id, besides=_T.c.id)
            statement = statement.where(live < max_running)
            params["p_alive_after"] = alive_after
        statement = statement.order_by(Calculation.created_at).limit(limit)
        return list((await self.session.execute(statement, params)).scalars())

    async def list_active_ids(self) -> list[uuid.UUID]:
        statement = select(Calculation.id).where(_IS_ACTIVE).order_by(Calculation.created_at)
        return list((await self.session.execute(statement)).scalars())


# --- the hot paths, batched across the callers of one event-loop turn (db.batches) ------

# In one order of the rows they lock (see db.batches, ``order``): the capped submit locks
# its owner's row, the plain one takes a key-share lock on it (the foreign key), and a
# quick finish locks its calculation. Any transaction that locks several users must
# take them in id order too (ScheduleRepository.lock_owners does).
_SUBMITS = {
    True: BatchedStatement(_SUBMIT_CAPPED, key=("p_id", "id"), order=lambda v: v["p_owner_id"]),
    False: BatchedStatement(_INSERT_NEW, key=("p_id", "id"), order=lambda v: v["p_owner_id"]),
}
_QUICK_FINISHES = BatchedStatement(_FINISH_QUEUED, key=("p_id", "id"), order=lambda v: v["p_id"])

# SQLite: one owner's capped submits of this process, one at a time.
_owner_lock = KeyedLocks()


async def submit_new(
    factory: async_sessionmaker[AsyncSession],
    *,
    owner_id: uuid.UUID,
    kind: str,
    params: dict[str, Any],
    now: datetime,
    max_active: int,
) -> Calculation | None:
    """A new QUEUED calculation, committed when this returns; None when the owner already
    has ``max_active`` QUEUED or RUNNING (0: no cap), and then nothing is written.

    PostgreSQL: one statement that commits by itself (capped, the function of migration
    0008: it takes the owner's row lock first, so parallel submits of any API process
    cannot all pass the count), batched with the other submits of this turn. SQLite (the
    embedded mode, one process): the count-and-insert statement under an in-process
    lock per owner."""
    if is_sqlite(factory):
        serialise = _owner_lock(owner_id) if max_active else contextlib.nullcontext()
        async with serialise, single_statement(factory) as connection:
            repo = CalculationRepository(connection)
            if not max_active:
                return await repo.create(owner_id=owner_id, kind=kind, params=params, now=now)
            return await repo.create_within_limit(
                owner_id=owner_id, kind=kind, params=params, now=now, max_active=max_active
            )
    values = _new_row(owner_id, kind, params, now)
    if max_active:
        values["p_max_active"] = max_active
    row = await _SUBMITS[bool(max_active)].fetch_one(autocommit_engine(factory), values)
    return Calculation(**row) if row else None


async def store_quick_result(
    factory: async_sessionmaker[AsyncSession],
    calculation_id: uuid.UUID,
    worker_id: str,
    *,
    kind: str,
    params: dict[str, Any],
    started: datetime,
    now: datetime,
    result: dict[str, Any],
    device: str,
) -> Calculation | None:
    """A quick run's result: QUEUED → SUCCEEDED in one conditional UPDATE that commits by
    itself, for a calculation of ``kind`` and ``params`` that nobody has claimed, parked
    or split; None (and nothing changed) otherwise. On PostgreSQL batched with the other
    quick runs' results of this turn."""
    values = {
        "p_id": calculation_id, "p_worker": worker_id, "p_kind": kind, "p_input": params,
        "p_started": started, "p_now": now, "p_result": result, "p_device": device,
    }  # fmt: skip
    if is_sqlite(factory):
        async with single_statement(factory) as connection:
            return await CalculationRepository(connection)._one(_FINISH_QUEUED, values)
    row = await _QUICK_FINISHES.fetch_one(autocommit_engine(factory), values)
    return Calculation(**row) if row else None
