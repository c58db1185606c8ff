"""Sessions over the API, on SQLite and PostgreSQL: list, log out, log out everywhere,
revoke one, change the password, refresh within an absolute expiry."""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.app.accounts_helpers import (
    ME,
    PASSWORD,
    REFRESH,
    SESSIONS,
    db_id,
    login,
    new_email,
    sql,
)
from tests.conftest import GraphQLClient, error_codes

LOGOUT = "mutation($t: String!) { logout(refreshToken: $t) }"
REVOKE = "mutation($id: ID!) { revokeSession(id: $id) }"
CHANGE = (
    "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) "
    "{ accessToken refreshToken user { email } } }"
)


async def test_each_login_is_a_session_and_the_current_one_is_marked(
    client: GraphQLClient,
) -> None:
    email = new_email()
    first = await client.register(email)
    second = await login(client, email, user_agent="Firefox/140")
    body = await client.execute(SESSIONS, token=second["accessToken"])
    sessions = body["data"]["sessions"]
    assert len(sessions) == 2
    current = [each for each in sessions if each["current"]]
    assert len(current) == 1 and current[0]["userAgent"] == "Firefox/140"
    assert current[0]["address"] == "203.0.113.7"
    created = datetime.fromisoformat(current[0]["createdAt"])
    expires = datetime.fromisoformat(current[0]["expiresAt"])
    assert abs(expires - created - timedelta(days=30)) < timedelta(seconds=5)
    # The other session sees the same two, itself as current.
    mine = await client.execute(SESSIONS, token=first["accessToken"])
    assert [s["current"] for s in mine["data"]["sessions"]].count(True) == 1
    assert {s["id"] for s in mine["data"]["sessions"]} == {s["id"] for s in sessions}
    assert error_codes(await client.execute(SESSIONS)) == ["UNAUTHENTICATED"]


async def test_login_sets_last_login_and_me_shows_the_account_state(
    client: GraphQLClient,
) -> None:
    email = new_email()
    registered = await client.register(email)
    before = await client.execute(ME, token=registered["accessToken"])
    assert before["data"]["me"]["isActive"] is True
    assert before["data"]["me"]["lastLoginAt"] is None
    logged_in = await login(client, email)
    assert logged_in["user"]["lastLoginAt"] is not None


async def test_logout_ends_that_session_only(client: GraphQLClient) -> None:
    email = new_email()
    first = await client.register(email)
    second = await login(client, email)
    assert (await client.execute(LOGOUT, {"t": first["refreshToken"]}))["data"]["logout"] is True
    assert error_codes(await client.execute(ME, token=first["accessToken"])) == ["UNAUTHENTICATED"]
    assert "errors" not in await client.execute(ME, token=second["accessToken"])
    refused = await client.execute(REFRESH, {"t": first["refreshToken"]})
    assert error_codes(refused) == ["UNAUTHENTICATED"]
    again = await client.execute(LOGOUT, {"t": first["refreshToken"]})
    assert again["data"]["logout"] is False
    unknown = await client.execute(LOGOUT, {"t": "not-a-token"})
    assert unknown["data"]["logout"] is False


async def test_logout_everywhere_ends_every_session(client: GraphQLClient) -> None:
    email = new_email()
    first = await client.register(email)
    second = await login(client, email)
    body = await client.execute("mutation { logoutEverywhere }", token=second["accessToken"])
    assert body["data"]["logoutEverywhere"] is True
    for payload in (first, second):
        assert error_codes(await client.execute(ME, token=payload["accessToken"])) == [
            "UNAUTHENTICATED"
        ]
        refused = await client.execute(REFRESH, {"t": payload["refreshToken"]})
        assert error_codes(refused) == ["UNAUTHENTICATED"]
    # A new login works.
    third = await login(client, email)
    assert "errors" not in await client.execute(ME, token=third["accessToken"])
    anonymous = await client.execute("mutation { logoutEverywhere }")
    assert error_codes(anonymous) == ["UNAUTHENTICATED"]


async def test_revoke_session_ends_one_of_the_callers_own(client: GraphQLClient) -> None:
    email = new_email()
    first = await client.register(email)
    second = await login(client, email)
    sessions = (await client.execute(SESSIONS, token=second["accessToken"]))["data"]["sessions"]
    other = next(each["id"] for each in sessions if not each["current"])
    someone_else = await client.register()
    stolen = await client.execute(REVOKE, {"id": other}, token=someone_else["accessToken"])
    assert error_codes(stolen) == ["NOT_FOUND"]
    assert "errors" not in await client.execute(ME, token=first["accessToken"])

    body = await client.execute(REVOKE, {"id": other}, token=second["accessToken"])
    assert body["data"]["revokeSession"] is True
    assert error_codes(await client.execute(ME, token=first["accessToken"])) == ["UNAUTHENTICATED"]
    again = await client.execute(REVOKE, {"id": other}, token=second["accessToken"])
    assert again["data"]["revokeSession"] is False
    left = (await client.execute(SESSIONS, token=second["accessToken"]))["data"]["sessions"]
    assert [each["current"] for each in left] == [True]
    for bad in ("nope", "00000000-0000-0000-0000-000000000000"):
        missing = await client.execute(REVOKE, {"id": bad}, token=second["accessToken"])
        assert error_codes(missing) == ["NOT_FOUND"]


async def test_change_password_checks_the_current_one_and_ends_other_sessions(
    client: GraphQLClient,
) -> None:
    email = new_email("changer")
    first = await client.register(email)
    second = await login(client, email)
    token = second["accessToken"]

    wrong = await client.execute(
        CHANGE, {"c": "not my password", "n": "a fresh tulip orbit"}, token=token
    )
    assert error_codes(wrong) == ["BAD_USER_INPUT"]
    assert wrong["errors"][0]["extensions"]["field"] == "currentPassword"
    weak = await client.execute(CHANGE, {"c": PASSWORD, "n": "password1234"}, token=token)
    assert error_codes(weak) == ["BAD_USER_INPUT"]
    assert "at least 10 characters" in weak["errors"][0]["message"]  # the rule is stated
    # Refused attempts changed nothing.
    assert "errors" not in await client.execute(ME, token=first["accessToken"])

    body = await client.execute(CHANGE, {"c": PASSWORD, "n": "a fresh tulip orbit"}, token=token)
    assert "errors" not in body, body
    changed = body["data"]["changePassword"]
    assert changed["user"]["email"] == email
    for old in (first, second):
        assert error_codes(await client.execute(ME, token=old["accessToken"])) == [
            "UNAUTHENTICATED"
        ]
    assert "errors" not in await client.execute(ME, token=changed["accessToken"])
    sessions = await client.execute(SESSIONS, token=changed["accessToken"])
    assert len(sessions["data"]["sessions"]) == 1
    old_login = await client.execute(
        "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }",
        {"e": email, "p": PASSWORD},
    )
    assert error_codes(old_login) == ["UNAUTHENTICATED"]
    await login(client, email, "a fresh tulip orbit")


async def test_refreshing_never_extends_a_session(client: GraphQLClient, database_url: str) -> None:
    registered = await client.register()
    before = (await client.execute(SESSIONS, token=registered["accessToken"]))["data"]
    rotated = (await client.execute(REFRESH, {"t": registered["refreshToken"]}))["data"]
    after = await client.execute(SESSIONS, token=rotated["refreshToken"]["accessToken"])
    assert after["data"]["sessions"][0]["expiresAt"] == before["sessions"][0]["expiresAt"]

    # A session past its absolute expiry: refresh and its access tokens are refused.
    other = await client.register()
    await sql(
        database_url,
        "UPDATE auth_sessions SET expires_at = :when WHERE user_id = :id",
        when=datetime.fromisoformat("2020-01-01T00:00:00"),
        id=db_id(other["user"]["id"], database_url),
    )
    refused = await client.execute(REFRESH, {"t": other["refreshToken"]})
    assert error_codes(refused) == ["UNAUTHENTICATED"]
    assert error_codes(await client.execute(ME, token=other["accessToken"])) == ["UNAUTHENTICATED"]


async def test_refresh_token_reuse_ends_the_session_and_its_access_tokens(
    client: GraphQLClient,
) -> None:
    registered = await client.register()
    body = await client.execute(REFRESH, {"t": registered["refreshToken"]})
    rotated = body["data"]["refreshToken"]
    assert "errors" not in await client.execute(ME, token=rotated["accessToken"])
    reused = await client.execute(REFRESH, {"t": registered["refreshToken"]})
    assert error_codes(reused) == ["UNAUTHENTICATED"]
    for token in (registered["accessToken"], rotated["accessToken"]):
        assert error_codes(await client.execute(ME, token=token)) == ["UNAUTHENTICATED"]
    thief = await client.execute(REFRESH, {"t": rotated["refreshToken"]})
    assert error_codes(thief) == ["UNAUTHENTICATED"]
