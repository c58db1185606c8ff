"""Errors over graphql-transport-ws carry a contract code too: the one masking place
(schema.extensions.ContractErrors) covers subscriptions as well as HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
import websockets

from crunchql.services import calculations
from tests.conftest import make_settings

UPDATES = "subscription($id: ID!) { calculationUpdates(id: $id) { status progress } }"
Socket = websockets.ClientConnection


class Server:
    def __init__(self, port: int) -> None:
        self.http = f"http://127.0.0.1:{port}/graphql"
        self.ws = f"ws://127.0.0.1:{port}/graphql"

    async def token(self) -> str:
        async with httpx.AsyncClient() as client:
            response = await client.post(
                self.http,
                json={
                    "query": "mutation($e: String!, $p: String!) { register(email: $e, "
                    "password: $p) { accessToken } }",
                    "variables": {
                        "e": f"{uuid.uuid4().hex[:8]}@example.com",
                        "p": "correct horse 42!",
                    },
                },
            )
        access: str = response.json()["data"]["register"]["accessToken"]
        return access

    async def errors_of(
        self, access: str | None, query: str, variables: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Runs one subscription over graphql-transport-ws and returns its errors, from
        an ``error`` message or from ``next`` payloads, until the operation ends."""
        async with websockets.connect(self.ws, subprotocols=["graphql-transport-ws"]) as socket:
            payload = {"Authorization": f"Bearer {access}"} if access else {}
            await socket.send(json.dumps({"type": "connection_init", "payload": payload}))
            assert json.loads(await asyncio.wait_for(socket.recv(), 30))["type"] == "connection_ack"
            subscribe = {"query": query, "variables": variables or {}}
            await socket.send(json.dumps({"id": "1", "type": "subscribe", "payload": subscribe}))
            errors: list[dict[str, Any]] = []
            while True:
                message = json.loads(await asyncio.wait_for(socket.recv(), 30))
                if message["type"] == "error":
                    return errors + list(message["payload"])
                if message["type"] == "next":
                    errors += message["payload"].get("errors", [])
                if message["type"] == "complete":
                    return errors


@pytest.fixture
async def server(empty_sqlite_url: str) -> AsyncIterator[Server]:
    """The embedded app served by uvicorn on a free port (a real WebSocket handshake)."""
    from crunchql.app.factory import create_app

    app = create_app(make_settings(database_url=empty_sqlite_url), configure_logs=False)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_config=None, ws="websockets-sansio", lifespan="on"
    )
    uvicorn_server = uvicorn.Server(config)
    task = asyncio.create_task(uvicorn_server.serve())
    async with asyncio.timeout(60):
        while not uvicorn_server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
    port = uvicorn_server.servers[0].sockets[0].getsockname()[1]
    yield Server(port)
    uvicorn_server.should_exit = True
    await asyncio.wait_for(task, 30)


def codes(errors: list[dict[str, Any]]) -> list[str]:
    return [error["extensions"]["code"] for error in errors]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("subscription { calculationUpdates(id: 1) { nope } }", "BAD_USER_INPUT"),  # validation
        (UPDATES, "BAD_USER_INPUT"),  # variable missing: coercion
    ],
)
async def test_refusals_before_execution_carry_a_code(
    server: Server, query: str, code: str
) -> None:
    errors = await server.errors_of(await server.token(), query)
    assert errors and set(codes(errors)) == {code}


async def test_a_document_that_does_not_parse_closes_the_socket_4400(server: Server) -> None:
    # graphql-transport-ws: an unparsable subscribe message is a protocol error (4400).
    with pytest.raises(websockets.ConnectionClosedError) as closed:
        await server.errors_of(await server.token(), "subscription {")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400


async def test_an_anonymous_subscription_is_unauthenticated(server: Server) -> None:
    errors = await server.errors_of(None, UPDATES, {"id": str(uuid.uuid4())})
    assert codes(errors) == ["UNAUTHENTICATED"]


async def test_an_unknown_calculation_is_not_found(server: Server) -> None:
    errors = await server.errors_of(await server.token(), UPDATES, {"id": str(uuid.uuid4())})
    assert codes(errors) == ["NOT_FOUND"]


async def test_an_unexpected_error_in_a_subscription_is_masked_and_logged(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def explode(*_args: object, **_kwargs: object) -> Any:
        raise RuntimeError("redis-internal:6379 refused, password=hunter2")
        yield  # an async generator, like the real watch()

    access = await server.token()
    monkeypatch.setattr(calculations, "watch", explode)
    with caplog.at_level(logging.ERROR, logger="crunchql.graphql"):
        errors = await server.errors_of(access, UPDATES, {"id": str(uuid.uuid4())})
    assert codes(errors) == ["INTERNAL_SERVER_ERROR"]
    assert errors[0]["message"] == "Internal server error."
    assert "hunter2" not in str(errors) and "redis-internal" not in str(errors)
    assert any(r.exc_info and "hunter2" in str(r.exc_info[1]) for r in caplog.records)
