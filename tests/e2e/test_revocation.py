"""Revocation on the production path: two Uvicorn API processes, PostgreSQL, Redis.

A session ended on one API process is refused on the other within 5 seconds, over
HTTP and on an open graphql-transport-ws subscription (which ends with an `error`
message carrying UNAUTHENTICATED). The database re-check is set to a minute here, so
only the event on the bus can meet the bound.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets

from tests.app.accounts_helpers import sql
from tests.conftest import truncate
from tests.e2e.processes import (
    HttpGraphQL,
    PrivateRedis,
    ServiceProcess,
    service_env,
    start_api,
    wait_healthy,
    ws_session,
)

BOUND_SECONDS = 5.0
PASSWORD = "correct horse battery"
WATCH = "subscription($id: ID!) { calculationUpdates(id: $id) { id status } }"


@pytest.fixture(scope="module")
async def apis(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[list[str]]:
    await truncate(postgres_url)
    log_dir = tmp_path_factory.mktemp("revocation-logs")
    # A Redis of its own: pub/sub is server-wide, and no other suite's restart may
    # interfere with the bound measured here.
    redis = await PrivateRedis.start(log_dir)
    # No worker: submitted calculations stay QUEUED, so their subscriptions stay open.
    env = service_env(postgres_url, redis.url, CRUNCHQL_SESSION_RECHECK_SECONDS="60")
    started: list[tuple[ServiceProcess, str]] = []
    try:
        started = [start_api(env, log_dir) for _ in range(2)]
        for process, base in started:
            await wait_healthy(base, process)
        yield [base for _, base in started]
    finally:
        for process, _ in started:
            process.stop()
        redis.stop()


async def log_in(base: str, email: str) -> HttpGraphQL:
    client = HttpGraphQL(base)
    body = await client.execute(
        "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }",
        {"e": email, "p": PASSWORD},
    )
    assert "errors" not in body, body
    client.token = body["data"]["login"]["accessToken"]
    return client


async def open_subscription(socket_: Any, calculation_id: str, op_id: str = "1") -> None:
    await socket_.send(
        json.dumps(
            {"id": op_id, "type": "subscribe",
             "payload": {"query": WATCH, "variables": {"id": calculation_id}}}
        )
    )  # fmt: skip
    first = json.loads(await asyncio.wait_for(socket_.recv(), 30))
    assert first["type"] == "next", first
    assert first["payload"]["data"]["calculationUpdates"]["status"] == "QUEUED"


async def operation_end(socket_: Any, op_id: str, timeout: float) -> dict[str, Any]:
    """The next message that ends operation ``op_id`` (error or complete)."""
    async with asyncio.timeout(timeout):
        while True:
            message: dict[str, Any] = json.loads(await socket_.recv())
            if message.get("id") == op_id and message["type"] in {"error", "complete"}:
                return message


async def refused(client: HttpGraphQL) -> bool:
    body = await client.execute("{ me { id } }")
    codes = [error["extensions"]["code"] for error in body.get("errors", [])]
    return codes == ["UNAUTHENTICATED"]


async def wait_refused(client: HttpGraphQL, deadline: float) -> None:
    while not await refused(client):
        assert time.monotonic() < deadline, "HTTP still answered after the bound"
        await asyncio.sleep(0.05)


async def test_logout_everywhere_on_one_api_ends_the_other_apis_requests_and_socket(
    apis: list[str],
) -> None:
    first_api, second_api = apis
    email = f"two-sessions-{uuid.uuid4().hex[:8]}@example.com"
    registering = HttpGraphQL(first_api)
    body = await registering.execute(
        "mutation($e: String!, $p: String!) { register(email: $e, password: $p) { user { id } } }",
        {"e": email, "p": PASSWORD},
    )
    assert "errors" not in body, body
    here = await log_in(first_api, email)
    there = await log_in(second_api, email)
    sessions = await here.execute("{ sessions { id current } }")
    assert len(sessions["data"]["sessions"]) == 3  # register, and two logins
    calculation = await there.submit({"monteCarloPi": {"samples": 1000, "seed": 1}})
    assert there.token is not None
    async with ws_session(second_api, there.token) as socket_:
        await open_subscription(socket_, calculation["id"])
        assert not await refused(there)  # live (and cached as live) on the other API

        ended = await here.execute("mutation { logoutEverywhere }")
        assert ended["data"]["logoutEverywhere"] is True
        deadline = time.monotonic() + BOUND_SECONDS
        message = await operation_end(socket_, "1", BOUND_SECONDS)
        assert message["type"] == "error", message
        assert message["payload"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        await wait_refused(there, deadline)
        # The socket stays open; a new operation on it is refused as well.
        await socket_.send(
            json.dumps(
                {"id": "2", "type": "subscribe",
                 "payload": {"query": WATCH, "variables": {"id": calculation["id"]}}}
            )
        )  # fmt: skip
        again = await operation_end(socket_, "2", 10)
        assert again["type"] == "error"
        assert again["payload"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert await refused(here)
    # A new socket with a token of the ended session is refused like a bad token.
    async with websockets.connect(
        f"ws://{second_api}/graphql", subprotocols=["graphql-transport-ws"]
    ) as socket_:
        await socket_.send(
            json.dumps(
                {"type": "connection_init", "payload": {"Authorization": f"Bearer {there.token}"}}
            )
        )
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket_.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    for client in (registering, here, there):
        await client.close()


async def test_an_admin_disabling_a_user_ends_that_users_socket_on_the_other_api(
    apis: list[str], postgres_url: str
) -> None:
    first_api, second_api = apis
    admin_email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
    user_email = f"target-{uuid.uuid4().hex[:8]}@example.com"
    anonymous = HttpGraphQL(first_api)
    ids: dict[str, str] = {}
    for email in (admin_email, user_email):
        body = await anonymous.execute(
            "mutation($e: String!, $p: String!) { register(email: $e, password: $p) "
            "{ user { id } } }",
            {"e": email, "p": PASSWORD},
        )
        ids[email] = body["data"]["register"]["user"]["id"]
    await sql(postgres_url, "UPDATE users SET role = 'ADMIN' WHERE email = :e", e=admin_email)
    admin = await log_in(first_api, admin_email)
    user = await log_in(second_api, user_email)
    calculation = await user.submit({"monteCarloPi": {"samples": 1000, "seed": 2}})
    assert user.token is not None
    async with ws_session(second_api, user.token) as socket_:
        await open_subscription(socket_, calculation["id"])
        body = await admin.execute(
            "mutation($id: ID!) { setUserActive(id: $id, active: false) { isActive } }",
            {"id": ids[user_email]},
        )
        assert body["data"]["setUserActive"]["isActive"] is False
        deadline = time.monotonic() + BOUND_SECONDS
        message = await operation_end(socket_, "1", BOUND_SECONDS)
        assert message["type"] == "error", message
        assert message["payload"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        await wait_refused(user, deadline)
    audit = await admin.execute(
        "query($id: ID!) { auditEvents(targetUserId: $id, action: USER_DISABLED) "
        "{ edges { node { actor { email } targetUser { email } address } } } }",
        {"id": ids[user_email]},
    )
    (event,) = [edge["node"] for edge in audit["data"]["auditEvents"]["edges"]]
    assert event["actor"]["email"] == admin_email
    assert event["targetUser"]["email"] == user_email
    assert event["address"] == "127.0.0.1"
    for client in (anonymous, admin, user):
        await client.close()
