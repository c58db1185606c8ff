"""Helpers shared by the account, administration and audit tests."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import GraphQLClient

PASSWORD = "correct horse battery"
LOGIN = (
    "mutation($e: String!, $p: String!) { login(email: $e, password: $p) "
    "{ accessToken refreshToken user { id email role isActive lastLoginAt } } }"
)
REFRESH = "mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken refreshToken } }"
ME = "{ me { id email role isActive lastLoginAt } }"
SESSIONS = "{ sessions { id createdAt lastUsedAt expiresAt userAgent address current } }"


def new_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@example.com"


async def login(
    client: GraphQLClient, email: str, password: str = PASSWORD, user_agent: str = "pytest/1"
) -> dict[str, Any]:
    body = await client.execute(
        LOGIN, {"e": email, "p": password}, headers={"User-Agent": user_agent}
    )
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["login"]
    return result


async def sql(database_url: str, statement: str, **params: Any) -> list[Any]:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as connection:
            result = await connection.execute(text(statement), params)
            return list(result.fetchall()) if result.returns_rows else []
    finally:
        await engine.dispose()


def db_id(user_id: str, database_url: str) -> str:
    """A user id as the database stores it (SQLite keeps UUIDs as 32 hex digits)."""
    return uuid.UUID(user_id).hex if database_url.startswith("sqlite") else user_id


async def make_admin(client: GraphQLClient, database_url: str) -> dict[str, Any]:
    """A registered account promoted to ADMIN before its first authenticated request
    (so no cache holds it as a USER); returns a fresh login."""
    email = new_email("admin")
    registered = await client.register(email)
    await sql(
        database_url,
        "UPDATE users SET role = 'ADMIN' WHERE id = :id",
        id=db_id(registered["user"]["id"], database_url),
    )
    return await login(client, email)
