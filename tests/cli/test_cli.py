from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_settings, running_app

ROOT = Path(__file__).resolve().parents[2]


def crunchql(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crunchql", *args], input=stdin, capture_output=True, text=True,
        cwd=ROOT, env={**os.environ, **(env or {})}, timeout=120, check=False,
    )  # fmt: skip


def test_help_lists_the_commands() -> None:
    result = crunchql("--help")
    assert result.returncode == 0
    for command in ("serve", "worker", "scheduler", "db", "users", "export-schema"):
        assert command in result.stdout


async def test_create_admin_reads_the_password_from_stdin(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'admin.sqlite3'}"
    env = {"DATABASE_URL": url, "CRUNCHQL_BCRYPT_ROUNDS": "4"}
    assert crunchql("db", "upgrade", env=env).returncode == 0
    result = crunchql(
        "users", "create-admin", "Root@Example.com", stdin="correct horse battery\n", env=env
    )
    assert result.returncode == 0, result.stderr
    assert "created admin root@example.com" in result.stdout
    assert "correct horse battery" not in result.stdout + result.stderr
    again = crunchql(
        "users", "create-admin", "root@example.com", stdin="correct horse battery\n", env=env
    )
    assert again.returncode == 1 and "already exists" in again.stderr

    async with running_app(make_settings(database_url=url)) as (_, client):
        user = await client.register("someone@example.com")
        client.token = user["accessToken"]
        body = await client.execute(
            "mutation { submitCalculation(input: {monteCarloPi: {samples: 1000}}) { id } }"
        )
        calculation_id = body["data"]["submitCalculation"]["id"]
        login = await client.execute(
            'mutation { login(email: "root@example.com", password: "correct horse battery") '
            "{ accessToken user { role } } }"
        )
        assert login["data"]["login"]["user"]["role"] == "ADMIN"
        # An ADMIN may read anyone's calculation; a USER only their own.
        seen = await client.execute(
            "query($id: ID!) { calculation(id: $id) { id owner { email } } }",
            {"id": calculation_id}, token=login["data"]["login"]["accessToken"],
        )  # fmt: skip
        assert seen["data"]["calculation"]["owner"]["email"] == "someone@example.com"


@pytest.mark.parametrize("args", [["worker"], ["serve", "--workers", "2"], ["scheduler"]])
def test_commands_that_need_redis_say_so(args: list[str]) -> None:
    result = crunchql(*args, env={"REDIS_URL": ""})
    assert result.returncode == 2 and "REDIS_URL" in result.stderr


def test_production_settings_refuse_to_start_with_a_clear_message() -> None:
    result = crunchql(
        "db", "upgrade", env={"CRUNCHQL_ENVIRONMENT": "production", "CRUNCHQL_JWT_SECRET": ""}
    )
    assert result.returncode == 2
    assert "configuration is not valid" in result.stderr
    assert "CRUNCHQL_JWT_SECRET must be set" in result.stderr
    assert "Traceback" not in result.stderr


async def test_users_list_set_role_disable_enable(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'users.sqlite3'}"
    env = {"DATABASE_URL": url, "CRUNCHQL_BCRYPT_ROUNDS": "4"}
    assert crunchql("db", "upgrade", env=env).returncode == 0
    created = crunchql(
        "users", "create-admin", "root@example.com", stdin="correct horse battery\n", env=env
    )
    assert created.returncode == 0, created.stderr
    async with running_app(make_settings(database_url=url)) as (_, client):
        await client.register("bob@example.com")
        await client.register("alice@example.com")

    listed = crunchql("users", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split()[:3] for line in listed.stdout.splitlines()[1:]]
    assert rows == [
        ["alice@example.com", "USER", "yes"],
        ["bob@example.com", "USER", "yes"],
        ["root@example.com", "ADMIN", "yes"],
    ]
    only = crunchql("users", "list", "--search", "BO", env=env)
    assert [line.split()[0] for line in only.stdout.splitlines()[1:]] == ["bob@example.com"]

    assert crunchql("users", "disable", "bob@example.com", env=env).stdout.strip() == (
        "bob@example.com: USER, disabled"
    )
    promoted = crunchql("users", "set-role", "alice@example.com", "ADMIN", env=env)
    assert promoted.stdout.strip() == "alice@example.com: ADMIN, active"
    # The last active ADMIN stays: with alice an ADMIN, root may step down, alice not.
    assert crunchql("users", "set-role", "root@example.com", "USER", env=env).returncode == 0
    last = crunchql("users", "disable", "alice@example.com", env=env)
    assert last.returncode == 1 and "last active ADMIN" in last.stderr
    missing = crunchql("users", "enable", "nobody@example.com", env=env)
    assert missing.returncode == 1 and "nobody@example.com" in missing.stderr

    async with running_app(make_settings(database_url=url)) as (_, client):
        login = (
            'mutation { login(email: "bob@example.com", password: "correct horse battery") '
            "{ accessToken } }"
        )
        refused = await client.execute(login)
        assert refused["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        # Off the event loop: the server runs on it, and a transaction of its (the
        # retention sweep's at start) must be able to commit while the CLI waits to write.
        enabled = await asyncio.to_thread(crunchql, "users", "enable", "bob@example.com", env=env)
        assert enabled.returncode == 0, enabled.stderr
        assert "errors" not in await client.execute(login)
        admin = await client.execute(
            'mutation { login(email: "alice@example.com", password: "correct horse battery") '
            "{ accessToken } }"
        )
        events = await client.execute(
            "{ auditEvents { edges { node { action actor { email } address userAgent } } } }",
            token=admin["data"]["login"]["accessToken"],
        )
        by_cli = [
            edge["node"]["action"]
            for edge in events["data"]["auditEvents"]["edges"]
            if edge["node"]["address"] == "cli"
        ]
        assert by_cli == [
            "USER_ENABLED",
            "ROLE_CHANGED",
            "ROLE_CHANGED",
            "USER_DISABLED",
            "REGISTERED",
        ]
