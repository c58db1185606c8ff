from __future__ import annotations

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
