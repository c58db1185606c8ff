"""Administration over the API, on SQLite and PostgreSQL: ADMIN only, users and every
calculation listed, roles and accounts changed (ending sessions), the last ADMIN kept."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crunchql.db.engine import create_engine, create_session_factory, unit_of_work
from crunchql.db.models import Calculation
from tests.app.accounts_helpers import LOGIN, ME, login, make_admin, new_email
from tests.conftest import GraphQLClient, error_codes, make_settings, running_app

USERS = (
    "query($first: Int, $after: String, $search: String) { users(first: $first, after: $after, "
    "search: $search) { edges { cursor node { id email role isActive } } "
    "pageInfo { hasNextPage endCursor } } }"
)
ALL = (
    "query($first: Int, $after: String, $status: CalculationStatus, $kind: String, $owner: ID) "
    "{ allCalculations(first: $first, after: $after, status: $status, kind: $kind, "
    "ownerId: $owner) { edges { node { id kind status owner { email } } } "
    "pageInfo { hasNextPage endCursor } } }"
)
SET_ROLE = "mutation($id: ID!, $r: Role!) { setUserRole(id: $id, role: $r) { id role } }"
SET_ACTIVE = (
    "mutation($id: ID!, $a: Boolean!) { setUserActive(id: $id, active: $a) { id isActive } }"
)
ADMIN_ONLY = [
    (USERS, {}),
    (ALL, {}),
    ("{ auditEvents { edges { node { id } } } }", {}),
    (SET_ROLE, {"id": str(uuid.uuid4()), "r": "ADMIN"}),
    (SET_ACTIVE, {"id": str(uuid.uuid4()), "a": False}),
]


@pytest.mark.parametrize(("query", "variables"), ADMIN_ONLY)
async def test_admin_fields_are_forbidden_to_users_and_need_a_token(
    client: GraphQLClient, query: str, variables: dict[str, Any]
) -> None:
    user = await client.register()
    assert error_codes(await client.execute(query, variables, token=user["accessToken"])) == [
        "FORBIDDEN"
    ]
    assert error_codes(await client.execute(query, variables)) == ["UNAUTHENTICATED"]


async def test_users_by_email_prefix_with_cursor_pagination(
    client: GraphQLClient, database_url: str
) -> None:
    admin = await make_admin(client, database_url)
    token = admin["accessToken"]
    tag = uuid.uuid4().hex[:6]
    emails = sorted(f"pager{tag}-{i}@example.com" for i in range(5))
    for email in emails:
        await client.register(email)
    await client.register(f"other{tag}@example.com")
    seen: list[str] = []
    after = None
    while True:
        body = await client.execute(
            USERS, {"first": 2, "after": after, "search": f"PAGER{tag}"}, token=token
        )
        page = body["data"]["users"]
        assert len(page["edges"]) <= 2
        seen += [edge["node"]["email"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == emails
    # A LIKE wildcard in the search is a character, not a pattern.
    wildcard = await client.execute(USERS, {"search": "%"}, token=token)
    assert wildcard["data"]["users"]["edges"] == []
    for bad in ({"first": -1}, {"first": 101}, {"after": "garbage!"}):
        assert error_codes(await client.execute(USERS, bad, token=token)) == ["BAD_USER_INPUT"]


async def test_all_calculations_with_filters(client: GraphQLClient, database_url: str) -> None:
    admin = await make_admin(client, database_url)
    token = admin["accessToken"]
    owners = [await client.register() for _ in range(2)]
    engine = create_engine(database_url)
    now = datetime.now(UTC)
    rows = [
        (owners[0], "monteCarloPi", "SUCCEEDED"),
        (owners[0], "primeCount", "FAILED"),
        (owners[1], "monteCarloPi", "CANCELLED"),
        (owners[1], "mandelbrot", "SUCCEEDED"),
    ]
    async with unit_of_work(create_session_factory(engine)) as session:
        for index, (owner, kind, status) in enumerate(rows):
            session.add(
                Calculation(
                    owner_id=uuid.UUID(owner["user"]["id"]), kind=kind, input={}, status=status,
                    created_at=now - timedelta(seconds=index),
                )
            )  # fmt: skip
    await engine.dispose()

    async def ids(**filters: Any) -> list[tuple[str, str, str]]:
        body = await client.execute(ALL, filters, token=token)
        assert "errors" not in body, body
        return [
            (e["node"]["owner"]["email"], e["node"]["kind"], e["node"]["status"])
            for e in body["data"]["allCalculations"]["edges"]
        ]

    everything = [(o["user"]["email"], k, s) for o, k, s in rows]
    assert await ids() == everything  # newest first
    assert await ids(status="SUCCEEDED") == [everything[0], everything[3]]
    assert await ids(kind="monteCarloPi") == [everything[0], everything[2]]
    assert await ids(owner=owners[1]["user"]["id"]) == everything[2:]
    first = await client.execute(ALL, {"first": 3}, token=token)
    page = first["data"]["allCalculations"]
    assert page["pageInfo"]["hasNextPage"] is True
    rest = await ids(after=page["pageInfo"]["endCursor"])
    assert rest == everything[3:]
    bad = await client.execute(ALL, {"owner": "not-an-id"}, token=token)
    assert error_codes(bad) == ["BAD_USER_INPUT"]


async def test_role_change_ends_the_users_sessions(
    client: GraphQLClient, database_url: str
) -> None:
    admin = await make_admin(client, database_url)
    email = new_email()
    user = await client.register(email)
    assert "errors" not in await client.execute(ME, token=user["accessToken"])
    body = await client.execute(
        SET_ROLE, {"id": user["user"]["id"], "r": "ADMIN"}, token=admin["accessToken"]
    )
    assert body["data"]["setUserRole"]["role"] == "ADMIN"
    # The old token (which says USER) is of an ended session.
    assert error_codes(await client.execute(ME, token=user["accessToken"])) == ["UNAUTHENTICATED"]
    promoted = await login(client, email)
    assert promoted["user"]["role"] == "ADMIN"
    listed = await client.execute(USERS, {"search": email}, token=promoted["accessToken"])
    assert listed["data"]["users"]["edges"][0]["node"]["role"] == "ADMIN"
    missing = await client.execute(
        SET_ROLE, {"id": str(uuid.uuid4()), "r": "USER"}, token=admin["accessToken"]
    )
    assert error_codes(missing) == ["NOT_FOUND"]


async def test_disabled_account_is_refused_everywhere_until_enabled(
    client: GraphQLClient, database_url: str
) -> None:
    admin = await make_admin(client, database_url)
    email = new_email()
    user = await client.register(email)
    assert "errors" not in await client.execute(ME, token=user["accessToken"])  # cached now
    body = await client.execute(
        SET_ACTIVE, {"id": user["user"]["id"], "a": False}, token=admin["accessToken"]
    )
    assert body["data"]["setUserActive"]["isActive"] is False
    assert error_codes(await client.execute(ME, token=user["accessToken"])) == ["UNAUTHENTICATED"]
    refused = await client.execute(
        "mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken } }",
        {"t": user["refreshToken"]},
    )
    assert error_codes(refused) == ["UNAUTHENTICATED"]
    # The same answer as a wrong password: nothing tells the account exists.
    disabled = await client.execute(LOGIN, {"e": email, "p": "correct horse battery"})
    wrong = await client.execute(LOGIN, {"e": email, "p": "not the password"})
    assert error_codes(disabled) == error_codes(wrong) == ["UNAUTHENTICATED"]
    assert disabled["errors"][0]["message"] == wrong["errors"][0]["message"]

    enabled = await client.execute(
        SET_ACTIVE, {"id": user["user"]["id"], "a": True}, token=admin["accessToken"]
    )
    assert enabled["data"]["setUserActive"]["isActive"] is True
    again = await login(client, email)
    assert again["user"]["isActive"] is True


async def test_the_last_active_admin_can_be_neither_demoted_nor_disabled(
    client: GraphQLClient, database_url: str
) -> None:
    admin = await make_admin(client, database_url)
    token, admin_id = admin["accessToken"], admin["user"]["id"]
    demote = await client.execute(SET_ROLE, {"id": admin_id, "r": "USER"}, token=token)
    disable = await client.execute(SET_ACTIVE, {"id": admin_id, "a": False}, token=token)
    assert error_codes(demote) == error_codes(disable) == ["CONFLICT"]
    me = await client.execute(ME, token=token)  # nothing changed, the session lives on
    assert me["data"]["me"]["role"] == "ADMIN" and me["data"]["me"]["isActive"] is True

    # With a second ADMIN the first may step down.
    other = await client.register()
    await client.execute(SET_ROLE, {"id": other["user"]["id"], "r": "ADMIN"}, token=token)
    body = await client.execute(SET_ROLE, {"id": admin_id, "r": "USER"}, token=token)
    assert body["data"]["setUserRole"]["role"] == "USER"


async def test_two_admins_demoting_each_other_at_once_leave_one(
    database_url: str, client: GraphQLClient
) -> None:
    """Two API processes' worth of services on one database (PostgreSQL: the row locks
    decide; SQLite: one process, its lock decides)."""
    first = await make_admin(client, database_url)
    second = await make_admin(client, database_url)
    async with running_app(make_settings(database_url=database_url)) as (_app, other_api):
        for _ in range(3):
            results = await asyncio.gather(
                client.execute(
                    SET_ROLE, {"id": second["user"]["id"], "r": "USER"},
                    token=first["accessToken"],
                ),
                other_api.execute(
                    SET_ROLE, {"id": first["user"]["id"], "r": "USER"},
                    token=second["accessToken"],
                ),
            )  # fmt: skip
            # One demotion went through; the other is refused: CONFLICT, or its caller
            # was already demoted (FORBIDDEN) and their session ended (UNAUTHENTICATED).
            assert sum("errors" not in body for body in results) == 1, results
            refused = next(body for body in results if "errors" in body)
            assert error_codes(refused)[0] in {"CONFLICT", "FORBIDDEN", "UNAUTHENTICATED"}
            admins = await client.execute(
                USERS, {"first": 100}, token=(first if "errors" not in results[0] else second)[
                    "accessToken"
                ],
            )  # fmt: skip
            roles = [e["node"]["role"] for e in admins["data"]["users"]["edges"]]
            assert roles.count("ADMIN") == 1
            # Put both back for the next round.
            winner = first if "errors" not in results[0] else second
            loser = second if winner is first else first
            await client.execute(
                SET_ROLE, {"id": loser["user"]["id"], "r": "ADMIN"}, token=winner["accessToken"]
            )
            refreshed = await login(client, loser["user"]["email"])
            loser.update(refreshed)
