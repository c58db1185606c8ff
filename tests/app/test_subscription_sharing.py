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


# ---- Direct frames: one serialised payload per event, byte-identical to the normal path ----

FULL = """subscription($id: ID!) { calculationUpdates(id: $id) {
  id status progress attempts startedAt finishedAt error
  result { ... on MonteCarloPiResult { estimate standardError samples } }
  partialResult { ... on MonteCarloPiResult { estimate standardError samples } }
  owner { id email }
} }"""


class Raw:
    """A socket read as it comes: the exact text of each message."""

    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.socket = socket

    @classmethod
    async def open(cls, port: int, token: str, query: str, calculation_id: uuid.UUID) -> Raw:
        watcher = await Watcher.open(port, token, query, calculation_id)
        return cls(watcher.socket)

    async def frame(self) -> str:
        message = await asyncio.wait_for(self.socket.recv(), 30)
        assert isinstance(message, str)
        return message


async def open_both(
    app: Starlette, port: int, token: str, query: str, calculation_id: uuid.UUID
) -> tuple[Raw, str, Raw, str]:
    """One subscription with direct frames, one without (the flag is read when an
    operation starts), and the first message of each."""
    view = app.state.graphql
    assert view.direct_frames
    direct = await Raw.open(port, token, query, calculation_id)
    first_direct = await direct.frame()
    view.direct_frames = False
    try:
        normal = await Raw.open(port, token, query, calculation_id)
        first_normal = await normal.frame()
    finally:
        view.direct_frames = True
    return direct, first_direct, normal, first_normal


def count_direct_frames(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from crunchql.app.graphql_view import GraphQLTransportWSHandler

    sent: list[str] = []
    send = GraphQLTransportWSHandler._send_frame

    async def counting(self: Any, operation: Any, frame: str) -> None:
        sent.append(frame)
        await send(self, operation, frame)

    monkeypatch.setattr(GraphQLTransportWSHandler, "_send_frame", counting)
    return sent


async def queued_row(app: Starlette, user_id: uuid.UUID) -> Any:
    async with unit_of_work(app.state.runtime.services.session_factory) as session:
        row = Calculation(owner_id=user_id, kind="monteCarloPi", input={"samples": 10})
        session.add(row)
    return row.to_snapshot()


async def test_direct_frames_are_byte_identical_to_the_normal_path(
    served: tuple[Starlette, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, port = served
    sent = count_direct_frames(monkeypatch)
    token, user_id = await register(port)
    services = app.state.runtime.services
    queued = await queued_row(app, user_id)
    direct, first_direct, normal, first_normal = await open_both(app, port, token, FULL, queued.id)
    # The snapshot goes the normal way in both (the ownership check, the operation's
    # extensions); the same bytes.
    assert first_direct == first_normal
    assert json.loads(first_direct)["payload"]["data"]["calculationUpdates"]["status"] == "QUEUED"
    assert sent == []

    now = datetime.now(UTC)
    running = dataclasses.replace(
        queued, status=CalculationStatus.RUNNING, version=queued.version + 1, attempts=1,
        started_at=now,
    )  # fmt: skip
    events = [
        CalculationEvent.status_change(running),
        CalculationEvent.progress_tick(
            queued.id,
            attempt=1,
            version=running.version,
            progress=0.5,
            partial_result={"estimate": 3.1, "standardError": 0.2, "samples": 5},
        ),
        CalculationEvent.status_change(
            dataclasses.replace(
                running,
                status=CalculationStatus.SUCCEEDED,
                version=running.version + 1,
                progress=1.0,
                finished_at=now,
                result={"estimate": 3.14, "standardError": 0.01, "samples": 10},
            )
        ),
    ]
    frames: list[tuple[str, str]] = []
    for event in events:
        await services.bus.publish(event)
        frames.append((await direct.frame(), await normal.frame()))
    for from_direct, from_normal in frames:
        assert from_direct == from_normal  # byte for byte, operation id included
    shown = [json.loads(d)["payload"]["data"]["calculationUpdates"] for d, _ in frames]
    assert [(s["status"], s["progress"]) for s in shown] == [
        ("RUNNING", 0.0),
        ("RUNNING", 0.5),
        ("SUCCEEDED", 1.0),
    ]
    assert shown[1]["partialResult"] == {"estimate": 3.1, "standardError": 0.2, "samples": 5}
    assert shown[2]["result"] == {"estimate": 3.14, "standardError": 0.01, "samples": 10}
    assert "extensions" in json.loads(frames[0][0])["payload"]  # the operation's cost
    # The three events took the direct way on one socket only, and `complete` follows
    # the terminal event on both.
    assert sent == [d for d, _ in frames]
    assert json.loads(await direct.frame()) == {"id": "1", "type": "complete"}
    assert json.loads(await normal.frame()) == {"id": "1", "type": "complete"}
    for raw in (direct, normal):
        await raw.socket.close()


async def test_refusals_and_errors_are_the_normal_paths_and_never_shared(
    served: tuple[Starlette, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, port = served
    sent = count_direct_frames(monkeypatch)
    token, user_id = await register(port)
    stranger, _ = await register(port)
    services = app.state.runtime.services
    queued = await queued_row(app, user_id)

    # A calculation the viewer may not see: refused before any data, the same way.
    direct, first_direct, normal, first_normal = await open_both(
        app, port, stranger, FULL, queued.id
    )
    assert first_direct == first_normal
    refusal = json.loads(first_direct)
    # (Strawberry answers an error raised by the subscription's source as a `next`.)
    assert refusal["payload"]["data"] is None
    assert refusal["payload"]["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    for raw in (direct, normal):
        await raw.socket.close()

    # An event whose execution fails (here: the owner field) is executed and answered
    # per subscriber, masked, with that subscriber's own request id; the next event
    # takes the direct way again.
    direct, first_direct, normal, first_normal = await open_both(app, port, token, FULL, queued.id)
    assert first_direct == first_normal
    from crunchql.schema import types

    def broken(cls: Any, user: Any) -> Any:
        raise RuntimeError("the owner cannot be shown")

    monkeypatch.setattr(types.User, "from_model", classmethod(broken))
    running = dataclasses.replace(
        queued, status=CalculationStatus.RUNNING, version=queued.version + 1, attempts=1,
        started_at=datetime.now(UTC),
    )  # fmt: skip
    await services.bus.publish(CalculationEvent.status_change(running))
    failed = [json.loads(await direct.frame()), json.loads(await normal.frame())]
    request_ids = []
    for message in failed:
        assert message["type"] == "next"
        (error,) = message["payload"]["errors"]
        assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
        request_ids.append(error["extensions"].pop("requestId"))
    assert failed[0] == failed[1]
    assert request_ids[0] != request_ids[1]  # each subscriber's own error
    assert sent == []

    monkeypatch.undo()
    sent = count_direct_frames(monkeypatch)
    await services.bus.publish(
        CalculationEvent.progress_tick(
            queued.id, attempt=1, version=running.version, progress=0.25, partial_result=None
        )
    )
    from_direct, from_normal = await direct.frame(), await normal.frame()
    assert from_direct == from_normal
    assert json.loads(from_direct)["payload"]["data"]["calculationUpdates"]["progress"] == 0.25
    assert sent == [from_direct]
    for raw in (direct, normal):
        await raw.socket.close()
