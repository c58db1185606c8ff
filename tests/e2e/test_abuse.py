"""WebSocket limits on a real Uvicorn started by `crunchql serve` (its message size
limit lives in the server): the application's own limits over WebSockets, the message
size, open sockets and subscriptions per user, and the per-socket operation rate."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets

from crunchql.db.migrate import upgrade_async
from tests.e2e.processes import (
    HttpGraphQL,
    service_env,
    start_api,
    wait_healthy,
    wait_until,
    ws_session,
)

pytestmark = pytest.mark.slow

LOGIN = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }"
UPDATES = "subscription($id: ID!) { calculationUpdates(id: $id) { id status } }"
SOCKETS, SUBSCRIPTIONS, OPERATIONS = 3, 3, 20


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    directory = tmp_path_factory.mktemp("abuse")
    url = f"sqlite+aiosqlite:///{directory / 'crunchql.sqlite3'}"
    await upgrade_async(url)
    env = service_env(
        url,
        None,
        CRUNCHQL_RATE_LIMITS="on",
        CRUNCHQL_LOGIN_ATTEMPTS_PER_ACCOUNT="2",
        CRUNCHQL_WS_MAX_SOCKETS_PER_USER=str(SOCKETS),
        CRUNCHQL_WS_MAX_SUBSCRIPTIONS_PER_USER=str(SUBSCRIPTIONS),
        CRUNCHQL_WS_OPERATIONS_PER_MINUTE=str(OPERATIONS),
        CRUNCHQL_MAX_RUNNING_PER_USER="1",
        CRUNCHQL_WARM_UP_KERNELS="false",
        CRUNCHQL_BCRYPT_ROUNDS="4",
    )
    api, base = start_api(env, directory)
    try:
        await wait_healthy(base, api)
        yield base
    finally:
        api.stop()


async def _operation(socket_: Any, op_id: str, query: str, variables: dict[str, Any]) -> Any:
    await socket_.send(
        json.dumps(
            {"id": op_id, "type": "subscribe", "payload": {"query": query, "variables": variables}}
        )
    )
    async with asyncio.timeout(30):
        while True:
            message = json.loads(await socket_.recv())
            if message.get("id") == op_id:
                return message


async def _closed_code(socket_: Any) -> int | None:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(30):
            while True:
                await socket_.recv()
    return closed.value.rcvd.code if closed.value.rcvd else None


async def test_login_limits_hold_over_websockets(server: str) -> None:
    """The finding: only nginx's POST limit stood in front of logins; the application's
    limits must apply whatever the transport."""
    graphql = HttpGraphQL(server)
    email = f"ws-{uuid.uuid4().hex[:8]}@example.com"
    await graphql.execute(
        'mutation($e: String!) { register(email: $e, password: "correct horse battery") '
        "{ accessToken } }",
        {"e": email},
    )
    codes = []
    async with ws_session(server, None) as socket_:
        for i in range(4):
            message = await _operation(socket_, str(i), LOGIN, {"e": email, "p": "wrong guess"})
            assert message["type"] == "next", message
            codes.append(message["payload"]["errors"][0]["extensions"]["code"])
    assert codes == ["UNAUTHENTICATED"] * 2 + ["RATE_LIMITED"] * 2
    await graphql.close()


async def test_a_message_over_256_kib_closes_the_socket(server: str) -> None:
    """The finding: a 2 MiB message was accepted (Uvicorn's default is 16 MiB)."""
    async with ws_session(server, None) as socket_:
        ok = await _operation(socket_, "small", "{ __typename }", {"pad": "x" * 200_000})
        assert ok["type"] == "next"
        try:
            await socket_.send(
                json.dumps({"type": "ping", "payload": {"pad": "x" * (2 * 1024 * 1024)}})
            )
        except websockets.ConnectionClosed as closed:
            # The server closed while the frame was still being written (seen on a
            # loaded machine): its close frame is then the send's error.
            code = closed.rcvd.code if closed.rcvd else None
        else:
            code = await _closed_code(socket_)
        assert code == 1009  # message too big


async def test_open_sockets_per_user_are_capped(server: str) -> None:
    graphql = HttpGraphQL(server)
    token = await graphql.register()
    async with ws_session(server, token), ws_session(server, token):
        async with (
            ws_session(server, token),
            websockets.connect(
                f"ws://{server}/graphql", subprotocols=["graphql-transport-ws"]
            ) as extra,
        ):
            await extra.send(
                json.dumps(
                    {
                        "type": "connection_init",
                        "payload": {"Authorization": f"Bearer {token}"},
                    }
                )
            )
            assert await _closed_code(extra) == 4429
        # One closed: a new one is admitted (its slot is freed as the socket ends).

        async def admitted() -> bool:
            try:
                async with ws_session(server, token) as socket_:
                    probe = await _operation(socket_, "probe", "{ __typename }", {})
                    return bool(probe["type"] == "next")
            except websockets.ConnectionClosed:
                return False

        await wait_until(admitted, 30, "a freed socket slot")
    await graphql.close()


async def test_subscriptions_per_user_count_across_sockets(server: str) -> None:
    """The finding: the subscription limit was per socket, so three sockets held three
    times as many."""
    graphql = HttpGraphQL(server)
    token = await graphql.register()
    long_job = {"monteCarloPi": {"samples": 10_000_000_000, "seed": 1}}
    ids = [(await graphql.submit(long_job))["id"] for _ in range(SUBSCRIPTIONS + 1)]
    async with ws_session(server, token) as first, ws_session(server, token) as second:
        for index, calculation_id in enumerate(ids[:SUBSCRIPTIONS]):
            socket_ = first if index % 2 == 0 else second
            message = await _operation(socket_, f"s{index}", UPDATES, {"id": calculation_id})
            assert message["type"] == "next" and "errors" not in message["payload"], message
        refused = await _operation(second, "over", UPDATES, {"id": ids[-1]})
        assert refused["type"] == "next", refused
        error = refused["payload"]["errors"][0]
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert error["extensions"]["retryAfter"] > 0
    for calculation_id in ids:
        await graphql.execute(
            "mutation($id: ID!) { cancelCalculation(id: $id) { id } }", {"id": calculation_id}
        )
    await graphql.close()


async def test_operations_per_socket_are_rate_limited(server: str) -> None:
    async with ws_session(server, None) as socket_:
        for i in range(OPERATIONS):
            message = await _operation(socket_, f"q{i}", "{ __typename }", {})
            assert message["type"] == "next", message
        refused = await _operation(socket_, "over", "{ __typename }", {})
    assert refused["type"] == "error", refused
    assert refused["payload"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert 0 < refused["payload"][0]["extensions"]["retryAfter"] <= 60
