"""The audit log over the API, on SQLite and PostgreSQL: every action recorded with
actor, target, address and user agent; newest first with filters; never a secret; in
the action's own transaction; also a structured log line."""

from __future__ import annotations

import uuid
from typing import Any

import structlog

from crunchql.db.engine import create_engine, create_session_factory, unit_of_work
from crunchql.db.models import Calculation
from tests.app.accounts_helpers import (
    LOGIN,
    PASSWORD,
    REFRESH,
    SESSIONS,
    db_id,
    login,
    make_admin,
    new_email,
    sql,
)
from tests.conftest import GraphQLClient, error_codes

EVENTS = (
    "query($first: Int, $after: String, $action: AuditAction, $actor: ID, $target: ID) "
    "{ auditEvents(first: $first, after: $after, action: $action, actorId: $actor, "
    "targetUserId: $target) { edges { cursor node { id at action address userAgent details "
    "actor { email } targetUser { email } } } pageInfo { hasNextPage endCursor } } }"
)
NEW_PASSWORD = "a fresh tulip orbit"


async def events(client: GraphQLClient, token: str, **filters: Any) -> list[dict[str, Any]]:
    body = await client.execute(EVENTS, {"first": 100, **filters}, token=token)
    assert "errors" not in body, body
    return [edge["node"] for edge in body["data"]["auditEvents"]["edges"]]


async def test_every_account_action_is_recorded_with_who_and_where(
    client: GraphQLClient, database_url: str
) -> None:
    admin = await make_admin(client, database_url)
    email = new_email("audited")
    user = await client.register(email)
    agent = {"User-Agent": "AuditBrowser/2"}
    await client.execute(LOGIN, {"e": email, "p": "not the password"}, headers=agent)
    second = await login(client, email, user_agent="AuditBrowser/2")
    rotated = await client.execute(REFRESH, {"t": second["refreshToken"]})
    assert "errors" not in rotated
    reused = await client.execute(REFRESH, {"t": second["refreshToken"]})  # reuse
    assert error_codes(reused) == ["UNAUTHENTICATED"]
    third = await login(client, email)
    await client.execute(
        "mutation($t: String!) { logout(refreshToken: $t) }", {"t": third["refreshToken"]}
    )
    fourth = await login(client, email)
    fifth = await login(client, email)
    sessions = (await client.execute(SESSIONS, token=fifth["accessToken"]))["data"]["sessions"]
    other = next(each["id"] for each in sessions if not each["current"])
    await client.execute(
        "mutation($id: ID!) { revokeSession(id: $id) }", {"id": other}, token=fifth["accessToken"]
    )
    changed = await client.execute(
        "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, "
        "newPassword: $n) { accessToken } }",
        {"c": PASSWORD, "n": NEW_PASSWORD},
        token=fifth["accessToken"],
    )
    token = changed["data"]["changePassword"]["accessToken"]
    await client.execute("mutation { logoutEverywhere }", token=token)
    user_id = user["user"]["id"]
    for query in (
        "mutation($id: ID!) { setUserRole(id: $id, role: ADMIN) { id } }",
        "mutation($id: ID!) { setUserActive(id: $id, active: false) { id } }",
        "mutation($id: ID!) { setUserActive(id: $id, active: true) { id } }",
    ):
        body = await client.execute(query, {"id": user_id}, token=admin["accessToken"])
        assert "errors" not in body, body
    assert fourth  # its session ended with logoutEverywhere

    recorded = await events(client, admin["accessToken"], target=user_id)
    actions = [each["action"] for each in recorded]
    assert actions == [
        "USER_ENABLED",
        "USER_DISABLED",
        "ROLE_CHANGED",
        "LOGGED_OUT_EVERYWHERE",
        "PASSWORD_CHANGED",
        "SESSION_REVOKED",
        "LOGIN_SUCCEEDED",
        "LOGIN_SUCCEEDED",
        "LOGGED_OUT",
        "LOGIN_SUCCEEDED",
        "REFRESH_TOKEN_REUSED",
        "LOGIN_SUCCEEDED",
        "LOGIN_FAILED",
        "REGISTERED",
    ]
    by_action = {each["action"]: each for each in reversed(recorded)}  # first of each
    failed = by_action["LOGIN_FAILED"]
    assert failed["actor"] is None and failed["targetUser"]["email"] == email
    assert failed["details"]["email"] == email and failed["userAgent"] == "AuditBrowser/2"
    assert all(each["address"] == "203.0.113.7" for each in recorded)
    role = by_action["ROLE_CHANGED"]
    assert role["actor"]["email"] == admin["user"]["email"]
    assert role["details"] == {"from": "USER", "to": "ADMIN"}
    assert by_action["REGISTERED"]["actor"]["email"] == email
    # Newest first, and pages follow each other.
    first_page = await client.execute(
        EVENTS, {"first": 5, "target": user_id}, token=admin["accessToken"]
    )
    page = first_page["data"]["auditEvents"]
    rest = await events(
        client, admin["accessToken"], target=user_id, after=page["pageInfo"]["endCursor"]
    )
    assert [e["node"]["id"] for e in page["edges"]] + [e["id"] for e in rest] == [
        e["id"] for e in recorded
    ]
    only = await events(client, admin["accessToken"], action="LOGIN_SUCCEEDED", target=user_id)
    assert len(only) == 4
    by_admin = await events(client, admin["accessToken"], actor=admin["user"]["id"])
    assert {e["action"] for e in by_admin} >= {"ROLE_CHANGED", "USER_DISABLED", "USER_ENABLED"}
    for bad in ({"actor": "nope"}, {"after": "garbage"}, {"first": 1000}):
        body = await client.execute(EVENTS, bad, token=admin["accessToken"])
        assert error_codes(body) == ["BAD_USER_INPUT"]

    # Never a password, a token or a hash, anywhere in the table.
    rows = await sql(database_url, "SELECT * FROM audit_events")
    dump = repr(rows)
    hashes = await sql(database_url, "SELECT password_hash FROM users")
    token_hashes = await sql(database_url, "SELECT token_hash FROM refresh_tokens")
    secrets = [PASSWORD, NEW_PASSWORD, "not the password", token]
    secrets += [payload[key] for payload in (user, second, third, fourth, fifth, admin)
                for key in ("accessToken", "refreshToken")]  # fmt: skip
    secrets += [row[0] for row in hashes + token_hashes]
    for secret in secrets:
        assert secret not in dump


async def test_an_admin_cancelling_someone_elses_calculation_is_recorded(
    client: GraphQLClient, database_url: str
) -> None:
    admin = await make_admin(client, database_url)
    owner = await client.register()
    engine = create_engine(database_url)
    async with unit_of_work(create_session_factory(engine)) as session:
        calculation = Calculation(
            owner_id=uuid.UUID(owner["user"]["id"]), kind="monteCarloPi", input={}
        )
        session.add(calculation)
    await engine.dispose()
    own = await client.register()
    body = await client.execute(
        "mutation($id: ID!) { cancelCalculation(id: $id) { status } }",
        {"id": str(calculation.id)},
        token=admin["accessToken"],
    )
    assert body["data"]["cancelCalculation"]["status"] == "CANCELLED"
    recorded = await events(client, admin["accessToken"], action="CALCULATION_CANCELLED_BY_ADMIN")
    assert len(recorded) == 1
    assert recorded[0]["targetUser"]["email"] == owner["user"]["email"]
    assert recorded[0]["actor"]["email"] == admin["user"]["email"]
    assert recorded[0]["details"] == {"calculationId": str(calculation.id)}
    assert own  # a USER cancelling their own is not an admin action (nothing recorded)


async def test_a_refused_action_leaves_no_record(client: GraphQLClient, database_url: str) -> None:
    admin = await make_admin(client, database_url)
    body = await client.execute(
        "mutation($id: ID!) { setUserRole(id: $id, role: USER) { id } }",
        {"id": admin["user"]["id"]},
        token=admin["accessToken"],
    )
    assert error_codes(body) == ["CONFLICT"]
    assert await events(client, admin["accessToken"], action="ROLE_CHANGED") == []
    weak = await client.execute(
        'mutation { register(email: "weak@example.com", password: "password1234") { accessToken } }'
    )
    assert error_codes(weak) == ["BAD_USER_INPUT"]
    assert await events(client, admin["accessToken"], action="REGISTERED") != []
    registered = await events(client, admin["accessToken"], action="REGISTERED")
    assert all(each["details"]["email"] != "weak@example.com" for each in registered)
    count = await sql(
        database_url,
        "SELECT count(*) FROM audit_events WHERE target_user_id = :id",
        id=db_id(admin["user"]["id"], database_url),
    )
    assert count[0][0] == 2  # REGISTERED and LOGIN_SUCCEEDED


async def test_audit_events_are_also_structured_log_lines(client: GraphQLClient) -> None:
    with structlog.testing.capture_logs() as lines:
        await client.register("logged@example.com")
        await client.execute(LOGIN, {"e": "logged@example.com", "p": "not the password"})
    audit = [line for line in lines if line.get("event") == "audit"]
    assert [line["action"] for line in audit] == ["REGISTERED", "LOGIN_FAILED"]
    assert audit[1]["details"] == {"email": "logged@example.com", "reason": "wrong password"}
    assert audit[1]["address"] == "203.0.113.7"
    assert all(
        PASSWORD not in repr(line) and "not the password" not in repr(line) for line in audit
    )
