"""Shared fixtures: real PostgreSQL and Redis (skipped locally when absent, a failure
under CI=true), the embedded SQLite path, and the app driven through ASGI."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from crunchql.core.settings import Settings, normalise_database_url
from crunchql.db.migrate import upgrade_async

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TABLES = ("schedule_fires", "refresh_tokens", "calculations", "schedules", "workers", "users")

# Kernels compiled once per machine, shared by every test process and subprocess.
os.environ.setdefault(
    "NUMBA_CACHE_DIR", str(Path(__file__).resolve().parent.parent / "var" / "numba-cache")
)


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def require_service(name: str, url: str, default_port: int) -> None:
    if _reachable(url, default_port):
        return
    message = f"{name} is not reachable at {url}"
    if IN_CI:
        pytest.fail(f"{message}: CI=true requires it (see README, 'Running the tests')")
    pytest.skip(f"!!! {message}: skipping — these tests run in CI, start {name} to run them here")


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "development",
        "jwt_secret": "test-secret-" + "x" * 40,
        "bcrypt_rounds": 4,
        "rate_limits": False,
        "warm_up_kernels": False,  # the compute tests compile them; app starts stay fast
        "progress_publish_interval": 0.02,
        "progress_write_interval": 0.1,
        # Tests that fire schedules drive the scheduler themselves (or turn it on).
        "run_scheduler": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, migrated PostgreSQL database for this test session."""
    require_service("PostgreSQL", PG_URL, 5432)
    admin_url = normalise_database_url(PG_URL)
    name = f"crunchql_test_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    await upgrade_async(url)
    yield url
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


@pytest.fixture(scope="session")
async def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sqlite") / "crunchql.sqlite3"
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade_async(url)
    return url


@pytest.fixture
async def empty_sqlite_url(sqlite_url: str) -> str:
    """The embedded database, emptied for this test."""
    await truncate(sqlite_url)
    return sqlite_url


@pytest.fixture(scope="session")
def redis_url() -> str:
    require_service("Redis", REDIS_URL, 6379)
    return REDIS_URL


async def truncate(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        if url.startswith("sqlite"):
            for table in TABLES:
                await connection.execute(text(f"DELETE FROM {table}"))
        else:
            await connection.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def any_database_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
async def database_url(any_database_url: str) -> str:
    """Each test that takes it runs on both backends, starting from empty tables."""
    await truncate(any_database_url)
    return any_database_url


async def flush_redis(url: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    await client.flushdb()
    await client.aclose()


class GraphQLClient:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.token: str | None = None

    async def post(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        bearer = token or self.token
        if bearer:
            all_headers["Authorization"] = f"Bearer {bearer}"
        return await self.http.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=all_headers
        )

    async def execute(
        self, query: str, variables: dict[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        response = await self.post(query, variables, **kw)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def register(
        self, email: str | None = None, password: str = "correct horse battery"
    ) -> dict[str, Any]:
        email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
        body = await self.execute(
            "mutation($e: String!, $p: String!) { register(email: $e, password: $p) "
            "{ accessToken refreshToken user { id email role } } }",
            {"e": email, "p": password},
        )
        assert "errors" not in body, body
        payload: dict[str, Any] = body["data"]["register"]
        return payload


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[Any, GraphQLClient]]:
    from crunchql.app.factory import create_app

    app = create_app(settings, configure_logs=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4242))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield app, GraphQLClient(http)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    """The embedded app (in-process queue and bus) on each database backend."""
    async with running_app(make_settings(database_url=database_url)) as (_app, graphql):
        yield graphql


def error_codes(body: dict[str, Any]) -> list[str]:
    return [error.get("extensions", {}).get("code") for error in body.get("errors", [])]


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll an async predicate until it returns something truthy (or fail)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def project_root() -> Iterator[Path]:
    yield Path(__file__).resolve().parent.parent
