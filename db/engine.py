"""Engine and session factories, and the one unit of work every caller uses."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import await_only

AfterCommit = Callable[[], Awaitable[None]]
logger = logging.getLogger("crunchql.db")
# A pooled connection back in the pool for longer than this is pinged before reuse
# (CRUNCHQL_DATABASE_PING_AFTER_IDLE_SECONDS).
PING_AFTER_IDLE_SECONDS = 30.0


def _ping_idle_connections(engine: AsyncEngine, ping_after_idle: float) -> None:
    """SQLAlchemy's ``pool_pre_ping``, without a round trip where none is needed.

    The asyncpg dialect's pre-ping is three round trips (BEGIN, an empty statement,
    ROLLBACK: its pgbouncer-safe form) on EVERY checkout: with a handful of statements
    per request that was a third of the database round trips of a submit or a run.
    Instead, at checkout:

    - A connection whose socket the server has closed (a restart, a failover that
      closes its sessions, ``pg_terminate_backend``) is replaced at once: the server
      says so as it goes (an error message, then the close), which asyncpg reads on
      the event loop while the connection sits in the pool, so ``is_closed()`` tells
      without asking the server.
    - Only a connection idle for longer than ``ping_after_idle`` is pinged (one round
      trip), for the drops nobody announces: a firewall or NAT that forgets an idle
      connection (after minutes, typically), a server that vanished without closing
      its sockets. A failed ping replaces it (the pool retries the checkout with a
      fresh connection).

    What is lost: a connection dropped silently within ``ping_after_idle`` of its last
    use fails its next statement, as any statement in flight at that moment fails
    anyway; the runner retries those (transient errors), a request gets an error.
    """

    @event.listens_for(engine.sync_engine, "connect")
    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if _closed_by_server(dbapi_connection):
            raise exc.DisconnectionError("the server closed the connection")
        checked_in = record.info.get("checked_in")
        if checked_in is not None and time.monotonic() - checked_in < ping_after_idle:
            return
        try:
            _ping(dbapi_connection)
        except Exception as error:
            raise exc.DisconnectionError(f"ping failed: {error}") from error


def _closed_by_server(dbapi_connection: Any) -> bool:
    """Whether the driver already knows the connection is gone (asyncpg: its protocol
    saw the server's close); False for drivers that cannot tell without asking."""
    raw = getattr(dbapi_connection, "_connection", None)
    is_closed = getattr(raw, "is_closed", None)
    return bool(is_closed()) if callable(is_closed) else False


def _ping(dbapi_connection: Any) -> None:
    """One round trip. SQLAlchemy's asyncpg adapter pings with three (BEGIN, ``;`` as a
    prepared statement, ROLLBACK: the form that is safe behind pgbouncer's transaction
    pooling); ``SELECT 1`` over the simple query protocol is one, prepares nothing,
    and is just as safe there. Other drivers ping their own way."""
    raw = getattr(dbapi_connection, "_connection", None)
    if raw is not None and type(raw).__module__.startswith("asyncpg"):
        await_only(raw.execute("SELECT 1"))
    else:
        dbapi_connection.ping()


def create_engine(
    url: str,
    *,
    pool_size: int = 20,
    max_overflow: int = 0,
    echo: bool = False,
    synchronous_commit: bool = True,
    ping_after_idle: float = PING_AFTER_IDLE_SECONDS,
) -> AsyncEngine:
    """An async engine for PostgreSQL (asyncpg) or SQLite (aiosqlite).

    ``synchronous_commit=False`` lets PostgreSQL acknowledge a commit before its WAL
    reaches the disk (a crash may lose the last few hundred milliseconds of commits,
    never corrupt anything). Workers use it: everything they write is recomputed if lost
    (a lost claim or result leaves a stale run, which is run again, with the same seed).
    The API keeps it on: an accepted calculation must survive a crash.

    ``ping_after_idle``: seconds a pooled connection may sit unused before it is pinged
    at checkout (``_ping_idle_connections``).
    """
    if url.startswith("sqlite"):
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets the in-process runner write while requests read.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    server_settings = {} if synchronous_commit else {"synchronous_commit": "off"}
    engine = create_async_engine(
        url,
        echo=echo,
        connect_args={"server_settings": server_settings},
        pool_size=pool_size,
        max_overflow=max_overflow,
        # The connection used last is the one handed out next: it is warm and needs no
        # ping, while the rest of a pool grown by a burst stays idle (first in, first
        # out would rotate through all of them, each idle long enough to be pinged).
        pool_use_lifo=True,
        pool_recycle=1800,
    )
    _ping_idle_connections(engine, ping_after_idle)
    return engine


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def after_commit(session: AsyncSession, callback: AfterCommit) -> None:
    """Run ``callback`` once the session's transaction has committed; never on rollback.

    Used to send a job or publish an event only about rows that really exist.
    """
    session.info.setdefault("after_commit", []).append(callback)


def is_sqlite(factory: async_sessionmaker[AsyncSession]) -> bool:
    """Whether ``factory``'s sessions talk to SQLite (the embedded mode)."""
    bind = factory.kw.get("bind")
    return bind is not None and bind.dialect.name == "sqlite"


@asynccontextmanager
async def read_only(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session for reads alone, in autocommit mode: no BEGIN and COMMIT round trips."""
    async with factory() as session:
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


_AUTOCOMMIT: weakref.WeakKeyDictionary[AsyncEngine, AsyncEngine] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def single_statement(
    factory: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncConnection | AsyncSession]:
    """A Core connection for ONE write statement, in autocommit mode: the statement is
    its own transaction (atomic, and committed when it returns), without the BEGIN and
    COMMIT round trips of ``unit_of_work``. Only for a block that runs a single
    statement; use ``unit_of_work`` for anything that must be all or nothing, or for
    ``after_commit``.

    No ORM session: the claim, the finish and the submit run here on every calculation,
    and a session around one statement cost about a third of a millisecond more (a
    ``SELECT 1`` through each: 0.88 vs 0.54 ms, median of 400, on 2026-11-29).
    Repositories take the connection where they take a session, for their Core
    statements.

    On SQLite (the embedded mode, not a hot path) it is still a session: setting
    aiosqlite's isolation level waits on its thread, and a task cancelled right there
    (the embedded queue's shutdown) left a bare connection checked out until the
    garbage collector found it; a session's close hands it back."""
    if is_sqlite(factory):
        async with factory() as session:
            await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            yield session
        return
    async with autocommit_engine(factory).connect() as connection:
        yield connection


def autocommit_engine(factory: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    """The factory's engine (its pool) in autocommit mode: each statement is its own
    transaction (``single_statement``; ``db.batches`` for statements batched across
    callers)."""
    bind = factory.kw["bind"]
    engine = _AUTOCOMMIT.get(bind)
    if engine is None:
        engine = _AUTOCOMMIT[bind] = bind.execution_options(isolation_level="AUTOCOMMIT")
    return engine


@asynccontextmanager
async def unit_of_work(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One session, one transaction: committed when the block succeeds, else rolled back."""
    async with factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException as error:
            session.info.pop("after_commit", None)
            if getattr(error, "commit_changes", False):
                # An error that must still persist what led to it (e.g. revoking a
                # refresh-token family on reuse).
                await session.commit()
            else:
                await session.rollback()
            raise
        callbacks: list[AfterCommit] = session.info.pop("after_commit", [])
    for callback in callbacks:
        try:
            await callback()
        except Exception:
            # The transaction stands: a lost message or event is recovered (workers
            # re-send unclaimed calculations, subscribers re-read), so the caller
            # must not be told that what was stored failed.
            logger.warning("after-commit callback failed", exc_info=True)
