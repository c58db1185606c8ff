"""Auth flows through the real ASGI app, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from tests.conftest import (
    GraphQLClient,
    error_codes,
    flush_redis,
    make_settings,
    running_app,
    wait_for,
)

LOGIN = (
    "mutation($e: String!, $p: String!) { login(email: $e, password: $p) "
    "{ accessToken refreshToken user { email } } }"
)
REFRESH = "mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken refreshToken } }"
ME = "{ me { id email role createdAt } }"


async def test_register_then_me(client: GraphQLClient) -> None:
    payload = await client.register("Ada@Example.COM ")
    assert payload["user"]["email"] == "ada@example.com"
    assert payload["user"]["role"] == "USER"
    body = await client.execute(ME, token=payload["accessToken"])
    assert body["data"]["me"]["email"] == "ada@example.com"
    assert body["data"]["me"]["createdAt"].endswith("+00:00")


async def test_login_with_any_casing(client: GraphQLClient) -> None:
    await client.register("grace@example.com")
    body = await client.execute(LOGIN, {"e": "  GRACE@example.com", "p": "correct horse battery"})
    assert body["data"]["login"]["user"]["email"] == "grace@example.com"


async def test_duplicate_email_in_any_case_is_a_conflict(client: GraphQLClient) -> None:
    await client.register("alan@example.com")
    body = await client.execute(
        'mutation { register(email: "ALAN@example.com", password: "correct horse battery") '
        "{ accessToken } }"
    )
    assert error_codes(body) == ["CONFLICT"]


@pytest.mark.parametrize(
    ("email", "password", "field"),
    [
        ("not-an-email", "correct horse battery", "email"),
        ("ok@example.com", "short", "password"),
        ("ok@example.com", "x" * 80, "password"),  # bcrypt's 72-byte limit: not a 500
    ],
)
async def test_bad_registration_input(
    client: GraphQLClient, email: str, password: str, field: str
) -> None:
    body = await client.execute(
        "mutation($e: String!, $p: String!) { register(email: $e, password: $p) { accessToken } }",
        {"e": email, "p": password},
    )
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["extensions"]["field"] == field
    login = await client.execute(LOGIN, {"e": email, "p": password})
    assert error_codes(login) == ["UNAUTHENTICATED"]  # nothing was stored


async def test_failed_login_does_not_reveal_whether_the_email_exists(
    client: GraphQLClient,
) -> None:
    await client.register("known@example.com")
    wrong = await client.execute(LOGIN, {"e": "known@example.com", "p": "wrong password!"})
    unknown = await client.execute(LOGIN, {"e": "nobody@example.com", "p": "wrong password!"})
    assert error_codes(wrong) == error_codes(unknown) == ["UNAUTHENTICATED"]
    assert wrong["errors"][0]["message"] == unknown["errors"][0]["message"]


async def test_refresh_rotates_and_reuse_revokes_the_family(client: GraphQLClient) -> None:
    first = await client.register()
    rotated = (await client.execute(REFRESH, {"t": first["refreshToken"]}))["data"]["refreshToken"]
    assert rotated["refreshToken"] != first["refreshToken"]
    # The rotated token works once…
    again = (await client.execute(REFRESH, {"t": rotated["refreshToken"]}))["data"]["refreshToken"]
    # …and presenting the first one again is theft: the whole family goes.
    reuse = await client.execute(REFRESH, {"t": first["refreshToken"]})
    assert error_codes(reuse) == ["UNAUTHENTICATED"]
    assert "revoked" in reuse["errors"][0]["message"]
    revoked = await client.execute(REFRESH, {"t": again["refreshToken"]})
    assert error_codes(revoked) == ["UNAUTHENTICATED"]


async def test_garbage_refresh_token(client: GraphQLClient) -> None:
    body = await client.execute(REFRESH, {"t": "not-a-token"})
    assert error_codes(body) == ["UNAUTHENTICATED"]


@pytest.mark.parametrize("token", [None, "garbage", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."])
async def test_protected_fields_need_a_valid_token(
    client: GraphQLClient, token: str | None
) -> None:
    body = await client.execute(ME, token=token)
    assert error_codes(body) == ["UNAUTHENTICATED"]
    assert body["data"] is None


async def test_malformed_authorization_header(client: GraphQLClient) -> None:
    body = await client.execute(ME, headers={"Authorization": "Basic abc"})
    assert error_codes(body) == ["UNAUTHENTICATED"]


async def test_typename_needs_no_token(client: GraphQLClient) -> None:
    body = await client.execute("{ __typename }")
    assert body["data"] == {"__typename": "Query"}


async def test_a_login_does_not_stall_other_requests(empty_sqlite_url: str) -> None:
    """bcrypt at cost 12 takes ~0.2 s: it must run off the event loop."""
    async with running_app(make_settings(database_url=empty_sqlite_url, bcrypt_rounds=12)) as (
        _,
        client,
    ):
        await client.register("slow@example.com")
        login = asyncio.create_task(
            client.execute(LOGIN, {"e": "slow@example.com", "p": "correct horse battery"})
        )
        await asyncio.sleep(0)  # let the login reach bcrypt
        started = time.perf_counter()
        quick = await client.execute("{ __typename }")
        quick_seconds = time.perf_counter() - started
        login_body = await login
        login_seconds = time.perf_counter() - started
        assert quick["data"] == {"__typename": "Query"}
        assert "errors" not in login_body
        assert quick_seconds < login_seconds / 2, (quick_seconds, login_seconds)


async def _limited_client(url: str, redis: str | None, **limits: Any) -> Any:
    return running_app(make_settings(database_url=url, redis_url=redis, rate_limits=True, **limits))


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_login_is_rate_limited_per_account(
    empty_sqlite_url: str, backend: str, request: pytest.FixtureRequest
) -> None:
    redis = request.getfixturevalue("redis_url") if backend == "redis" else None
    if redis:
        await flush_redis(redis)
    async with await _limited_client(empty_sqlite_url, redis, login_attempts_per_account=3) as (
        _,
        client,
    ):
        await client.register("target@example.com")
        codes = []
        for _ in range(5):
            body = await client.execute(LOGIN, {"e": "target@example.com", "p": "wrong password!"})
            codes.append(error_codes(body)[0])
        assert codes == ["UNAUTHENTICATED"] * 3 + ["RATE_LIMITED"] * 2
    if redis:
        await flush_redis(redis)


@pytest.mark.parametrize(
    "document",
    [
        " ".join(
            f'a{i}: login(email: "packed@example.com", password: "correct horse battery") '
            "{ accessToken }"
            for i in range(8)
        ),
        # A fragment and two different authentication mutations are no way around it.
        '...F } fragment F on Mutation { login(email: "packed@example.com", '
        'password: "correct horse battery") { accessToken } '
        'register(email: "new@example.com", password: "correct horse battery") '
        "{ accessToken }",
    ],
)
async def test_one_authentication_mutation_per_operation(
    empty_sqlite_url: str, document: str
) -> None:
    """The finding: 50 aliased logins cost 50 bcrypt runs in one request."""
    async with await _limited_client(empty_sqlite_url, None, login_attempts_per_address=1) as (
        _,
        client,
    ):
        await client.register("packed@example.com")
        body = await client.execute(f"mutation {{ {document} }}")
        assert error_codes(body) == ["BAD_USER_INPUT"]
        assert "data" not in body  # refused before anything ran
        # Nothing was counted against the address (its budget is one login) and
        # nothing registered.
        single = await client.execute(
            LOGIN, {"e": "packed@example.com", "p": "correct horse battery"}
        )
        assert "errors" not in single, single
        assert error_codes(
            await client.execute(LOGIN, {"e": "new@example.com", "p": "correct horse battery"})
        ) == ["RATE_LIMITED"]


@asynccontextmanager
async def client_at(app: Any, address: str) -> AsyncIterator[GraphQLClient]:
    """A second client of the same app, coming from another address."""
    transport = httpx.ASGITransport(app=app, client=(address, 5151))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield GraphQLClient(http)


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_parallel_wrong_passwords_are_counted_before_bcrypt(
    empty_sqlite_url: str, backend: str, request: pytest.FixtureRequest
) -> None:
    """The finding: 30 wrong passwords sent at once (limit 10) all answered
    UNAUTHENTICATED, none RATE_LIMITED: the limit was check-then-record."""
    redis = request.getfixturevalue("redis_url") if backend == "redis" else None
    if redis:
        await flush_redis(redis)
    async with await _limited_client(empty_sqlite_url, redis, login_attempts_per_account=10) as (
        _,
        client,
    ):
        await client.register("burst@example.com")
        bodies = await asyncio.gather(
            *(
                client.execute(LOGIN, {"e": "burst@example.com", "p": f"wrong password {i}"})
                for i in range(30)
            )
        )
        codes = [error_codes(body)[0] for body in bodies]
        assert codes.count("RATE_LIMITED") >= 20, codes
        assert set(codes) == {"UNAUTHENTICATED", "RATE_LIMITED"}
    if redis:
        await flush_redis(redis)


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_an_attacker_cannot_lock_the_owner_out(
    empty_sqlite_url: str, backend: str, request: pytest.FixtureRequest
) -> None:
    """The finding: 10 wrong passwords from anywhere locked the owner out for 5 minutes,
    renewable forever. Failures now count per (account, address)."""
    redis = request.getfixturevalue("redis_url") if backend == "redis" else None
    if redis:
        await flush_redis(redis)
    async with await _limited_client(empty_sqlite_url, redis, login_attempts_per_account=5) as (
        app,
        attacker,
    ):
        await attacker.register("owner@example.com")
        hammering = [
            await attacker.execute(LOGIN, {"e": "owner@example.com", "p": "guess {i}"})
            for i in range(12)
        ]
        assert error_codes(hammering[-1]) == ["RATE_LIMITED"]
        async with client_at(app, "198.51.100.20") as owner:
            own = await owner.execute(
                LOGIN, {"e": "owner@example.com", "p": "correct horse battery"}
            )
        assert "errors" not in own, own
        # The attacker's own address stays locked, even with the right password.
        locked = await attacker.execute(
            LOGIN, {"e": "owner@example.com", "p": "correct horse battery"}
        )
        assert error_codes(locked) == ["RATE_LIMITED"]
    if redis:
        await flush_redis(redis)


async def test_the_lockout_grows_with_repeated_failures(empty_sqlite_url: str) -> None:
    async with await _limited_client(
        empty_sqlite_url, None, login_attempts_per_account=2, rate_limit_window_seconds=2
    ) as (_, client):
        await client.register("stubborn@example.com")
        retry_afters = []
        for _ in range(2):
            for _ in range(2):
                wrong = await client.execute(LOGIN, {"e": "stubborn@example.com", "p": "nope!"})
                assert error_codes(wrong) == ["UNAUTHENTICATED"]
            refused = await client.execute(LOGIN, {"e": "stubborn@example.com", "p": "nope!"})
            assert error_codes(refused) == ["RATE_LIMITED"]
            retry_after = refused["errors"][0]["extensions"]["retryAfter"]
            retry_afters.append(retry_after)

            async def unlocked() -> bool:
                body = await client.execute(
                    LOGIN, {"e": "stubborn@example.com", "p": "correct horse battery"}
                )
                return "errors" not in body

            await wait_for(unlocked, timeout=retry_after + 10, interval=0.2)
        assert retry_afters == [2, 4]  # one window, then two


async def test_login_answers_carry_rate_limit_headers(empty_sqlite_url: str) -> None:
    async with await _limited_client(empty_sqlite_url, None, login_attempts_per_account=3) as (
        _,
        client,
    ):
        await client.register("headers@example.com")
        response = await client.post(LOGIN, {"e": "headers@example.com", "p": "wrong password"})
        policy = response.headers["RateLimit-Policy"]
        assert '"login";q=3;w=300' in policy
        assert '"login-requests";q=300;w=300' in policy
        assert '"login";r=2;t=' in response.headers["RateLimit"]
        plain = await client.post("{ __typename }")
        assert "RateLimit" not in plain.headers  # it consumed no limit


async def test_successful_logins_do_not_lock_an_account(empty_sqlite_url: str) -> None:
    async with await _limited_client(empty_sqlite_url, None, login_attempts_per_account=2) as (
        _,
        client,
    ):
        await client.register("regular@example.com")
        for _ in range(6):
            body = await client.execute(
                LOGIN, {"e": "regular@example.com", "p": "correct horse battery"}
            )
            assert "errors" not in body
        # Two wrong passwords use up the account's allowance; then even the right one waits.
        for _ in range(2):
            wrong = await client.execute(
                LOGIN, {"e": "regular@example.com", "p": "wrong password!"}
            )
            assert error_codes(wrong) == ["UNAUTHENTICATED"]
        right = await client.execute(
            LOGIN, {"e": "regular@example.com", "p": "correct horse battery"}
        )
        assert error_codes(right) == ["RATE_LIMITED"]


async def test_register_is_rate_limited_per_address(empty_sqlite_url: str) -> None:
    async with await _limited_client(empty_sqlite_url, None, register_attempts_per_address=2) as (
        _,
        client,
    ):
        await client.register()
        await client.register()
        body = await client.execute(
            'mutation { register(email: "third@example.com", password: "correct horse battery") '
            "{ accessToken } }"
        )
        assert error_codes(body) == ["RATE_LIMITED"]
        assert body["errors"][0]["extensions"]["retryAfter"] > 0


async def test_a_disabled_account_is_refused_within_the_cache_time(empty_sqlite_url: str) -> None:
    from sqlalchemy import update
    from sqlalchemy.ext.asyncio import create_async_engine

    from crunchql.db.models import User
    from tests.conftest import wait_for

    settings = make_settings(database_url=empty_sqlite_url, user_cache_seconds=0.2)
    async with running_app(settings) as (_, client):
        payload = await client.register("leaver@example.com")
        assert "errors" not in await client.execute(ME, token=payload["accessToken"])
        engine = create_async_engine(empty_sqlite_url)
        async with engine.begin() as connection:
            await connection.execute(
                update(User).where(User.email == "leaver@example.com").values(is_active=False)
            )
        await engine.dispose()

        async def refused() -> bool:
            body = await client.execute(ME, token=payload["accessToken"])
            return error_codes(body) == ["UNAUTHENTICATED"]

        await wait_for(refused, timeout=5)
        login = await client.execute(
            LOGIN, {"e": "leaver@example.com", "p": "correct horse battery"}
        )
        assert error_codes(login) == ["UNAUTHENTICATED"]


async def test_a_long_lived_context_notices_a_disabled_account(empty_sqlite_url: str) -> None:
    """A WebSocket keeps one context for its whole life: each operation must still see
    the account as it is now (within the user-cache time), not as it was at connect."""
    from types import SimpleNamespace

    from sqlalchemy import update
    from sqlalchemy.ext.asyncio import create_async_engine

    from crunchql.core.errors import UnauthenticatedError
    from crunchql.db.models import User
    from crunchql.resolvers.context import Context, current_user
    from tests.conftest import wait_for

    settings = make_settings(database_url=empty_sqlite_url, user_cache_seconds=0.2)
    async with running_app(settings) as (app, client):
        payload = await client.register("socket@example.com")
        services = app.state.runtime.services
        context = Context(services=services, connection=None, client="ws")  # type: ignore[arg-type]
        context.claims = services.tokens.decode_access_token(payload["accessToken"])
        info = SimpleNamespace(context=context)
        assert (await current_user(info)).email == "socket@example.com"  # type: ignore[arg-type]
        engine = create_async_engine(empty_sqlite_url)
        async with engine.begin() as connection:
            await connection.execute(update(User).values(is_active=False))
        await engine.dispose()

        async def refused() -> bool:
            try:
                await current_user(info)  # type: ignore[arg-type]
            except UnauthenticatedError:
                return True
            return False

        await wait_for(refused, timeout=5)
