"""Subscribers of one calculation with one selection set share one GraphQL execution
per event (schema.sharing); each still receives every update, over its own socket."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from crunchql.core.lifecycle import CalculationEvent
from crunchql.db.engine import unit_of_work
from crunchql.db.models import Calculation, CalculationStatus
from crunchql.schema import sharing
from crunchql.schema.types import Calculation as CalculationType
from tests.conftest import make_settings

STATUS = "subscription($id: ID!) { calculationUpdates(id: $id) { status progress } }"
OTHER = "subscription($id: ID!) { calculationUpdates(id: $id) { status attempts } }"


@pytest.fixture
async def served(empty_sqlite_url: str) -> AsyncIterator[tuple[Starlette, int]]:
    from crunchql.app.factory import create_app

    sharing.clear_caches()
    app = create_app(make_settings(database_url=empty_sqlite_url), configure_logs=False)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_config=None, ws="websockets-sansio", lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(60):
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
    yield app, server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    await asyncio.wait_for(task, 30)


async def register(port: int) -> tuple[str, uuid.UUID]:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"http://127.0.0.1:{port}/graphql",
            json={
                "query": "mutation($e: String!, $p: String!) { register(email: $e, "
                "password: $p) { accessToken user { id } } }",
                "variables": {"e": f"{uuid.uuid4().hex[:8]}@example.com", "p": "correct horse 42!"},
            },
        )
    payload = response.json()["data"]["register"]
    return payload["accessToken"], uuid.UUID(payload["user"]["id"])


class Watcher:
    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.socket = socket

    @classmethod
    async def open(cls, port: int, token: str, query: str, calculation_id: uuid.UUID) -> Watcher:
        socket = await websockets.connect(
            f"ws://127.0.0.1:{port}/graphql", subprotocols=["graphql-transport-ws"]
        )
        init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}
        await socket.send(json.dumps(init))
        assert json.loads(await asyncio.wait_for(socket.recv(), 30))["type"] == "connection_ack"
        subscribe = {"query": query, "variables": {"id": str(calculation_id)}}
        await socket.send(json.dumps({"id": "1", "type": "subscribe", "payload": subscribe}))
        return cls(socket)

    async def next(self) -> dict[str, Any]:
        message = json.loads(await asyncio.wait_for(self.socket.recv(), 30))
        assert message["type"] == "next", message
        assert "errors" not in message["payload"], message
        data: dict[str, Any] = message["payload"]["data"]["calculationUpdates"]
        return data


async def test_subscribers_with_the_same_selection_share_one_execution_per_event(
    served: tuple[Starlette, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, port = served
    executions = 0
    execute = StrawberryGraphQLCoreExecutionContext.execute_operation

    def counting(self: Any, serially: bool | None = None) -> Any:
        nonlocal executions
        if isinstance(self.root_value, CalculationType):
            executions += 1
        return execute(self, serially)

    monkeypatch.setattr(StrawberryGraphQLCoreExecutionContext, "execute_operation", counting)

    token, user_id = await register(port)
    services = app.state.runtime.services
    # A QUEUED row with no job behind it: the test drives its events itself.
    async with unit_of_work(services.session_factory) as session:
        row = Calculation(owner_id=user_id, kind="monteCarloPi", input={"samples": 10})
        session.add(row)
    queued = row.to_snapshot()

    same = [await Watcher.open(port, token, STATUS, queued.id) for _ in range(3)]
    other = await Watcher.open(port, token, OTHER, queued.id)
    watchers = [*same, other]
    for watcher in watchers:
        assert (await watcher.next())["status"] == "QUEUED"

    now = datetime.now(UTC)
    running = dataclasses.replace(
        queued, status=CalculationStatus.RUNNING, version=queued.version + 1, attempts=1,
        started_at=now,
    )  # fmt: skip
    cancelled = dataclasses.replace(
        running, status=CalculationStatus.CANCELLED, version=running.version + 1, finished_at=now
    )
    seen: list[list[dict[str, Any]]] = [[] for _ in watchers]
    for snapshot in (running, cancelled):
        await services.bus.publish(CalculationEvent.status_change(snapshot))
        for index, watcher in enumerate(watchers):
            seen[index].append(await watcher.next())
    for watcher in watchers:
        await watcher.socket.close()

    # Every subscriber saw every update, the same ones for the same selection...
    assert (
        seen[0]
        == seen[1]
        == seen[2]
        == [
            {"status": "RUNNING", "progress": 0.0},
            {"status": "CANCELLED", "progress": 0.0},
        ]
    )
    assert seen[3] == [{"status": "RUNNING", "attempts": 1}, {"status": "CANCELLED", "attempts": 1}]
    # ...for one execution per state per selection set: 3 states x 2 selections,
    # not 3 states x 4 subscribers.
    assert executions == 6
