"""Pooled connections: replaced at checkout when the server has closed them, pinged
before reuse only after sitting idle, and replaced when a ping fails (what
``pool_pre_ping`` did on every checkout, at three round trips each)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from crunchql.db import engine as engine_module
from crunchql.db.engine import create_engine


async def backend_pid(engine: object) -> int:
    async with engine.connect() as connection:  # type: ignore[attr-defined]
        return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def terminate(admin: object, pid: int) -> None:
    """The server ends that backend, as a restart or failover would."""
    async with admin.connect() as connection:  # type: ignore[attr-defined]
        await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


async def driver_connection(engine: object) -> object:
    """The asyncpg connection the pool hands out next (and takes back at once)."""
    async with engine.connect() as connection:  # type: ignore[attr-defined]
        return (await connection.get_raw_connection()).driver_connection


async def test_a_connection_the_server_closed_is_replaced_without_a_ping(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings: list[object] = []
    monkeypatch.setattr(engine_module, "_ping", pings.append)
    engine = create_engine(postgres_url, pool_size=1, ping_after_idle=3600.0)
    admin = create_async_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        first = await backend_pid(engine)
        raw = await driver_connection(engine)  # the pool's one connection
        await terminate(admin, first)
        # The server's goodbye reaches the idle connection through the event loop.
        async with asyncio.timeout(10):
            while not raw.is_closed():  # type: ignore[attr-defined]
                await asyncio.sleep(0.005)
        second = await backend_pid(engine)  # no error reaches the caller
        assert second != first and pings == []
    finally:
        await engine.dispose()
        await admin.dispose()


async def test_a_connection_dropped_while_idle_is_replaced_not_handed_out(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drop the driver has not noticed (a firewall's, say) is found by the ping of a
    connection idle for longer than the threshold."""
    # "Idle for longer than the threshold", without waiting for it.
    engine = create_engine(postgres_url, pool_size=1, ping_after_idle=0.0)
    admin = create_async_engine(postgres_url, isolation_level="AUTOCOMMIT")
    monkeypatch.setattr(engine_module, "_closed_by_server", lambda connection: False)
    try:
        first = await backend_pid(engine)
        await terminate(admin, first)
        second = await backend_pid(engine)  # no error reaches the caller
        assert second != first
    finally:
        await engine.dispose()
        await admin.dispose()


async def test_a_connection_back_a_moment_ago_is_not_pinged_and_a_ping_is_one_round_trip(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncpg

    pings: list[list[str]] = []  # what each ping sent to the server
    pinging = False
    original_ping = engine_module._ping
    original_execute = asyncpg.Connection.execute

    def counting_ping(dbapi_connection: object) -> None:
        nonlocal pinging
        pings.append([])
        pinging = True
        try:
            original_ping(dbapi_connection)
        finally:
            pinging = False

    async def recording_execute(self: asyncpg.Connection, query: str, *args: object) -> str:
        if pinging:
            pings[-1].append(query)
        return await original_execute(self, query, *args)

    monkeypatch.setattr(engine_module, "_ping", counting_ping)
    engine = create_engine(postgres_url, pool_size=1, ping_after_idle=0.2)
    try:
        await backend_pid(engine)  # a new connection: not pinged either
        await backend_pid(engine)  # checked in just now: no ping
        assert pings == []
        await asyncio.sleep(0.25)  # idle for longer than the threshold
        monkeypatch.setattr(asyncpg.Connection, "execute", recording_execute)
        assert await backend_pid(engine) > 0  # pinged
        # One statement over the simple protocol, no transaction around it (the
        # dialect's own ping: BEGIN, a prepared statement, ROLLBACK).
        assert pings == [["SELECT 1"]]
    finally:
        await engine.dispose()


async def test_a_burst_above_the_pool_s_size_reuses_its_connections(postgres_url: str) -> None:
    # By default the pool opens no connection beyond its size: a burst waits for one to
    # come back instead of opening connections that close again on return (each a
    # connection set-up, and its prepared statements lost, on every burst).
    engine = create_engine(postgres_url, pool_size=3)
    try:

        async def slow_pid() -> int:
            async with engine.connect() as connection:
                sql = text("SELECT pg_backend_pid() FROM pg_sleep(0.02)")
                return int((await connection.execute(sql)).scalar_one())

        first = set(await asyncio.gather(*(slow_pid() for _ in range(12))))
        second = set(await asyncio.gather(*(slow_pid() for _ in range(12))))
        assert len(first) <= 3 and second == first
    finally:
        await engine.dispose()
