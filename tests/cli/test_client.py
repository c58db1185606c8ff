"""The command-line client (`crunchql login/submit/watch/list/cancel/logout`) against a
live server: `crunchql serve` in a subprocess, embedded queue and bus."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.processes import (
    ROOT,
    embedded_api,
    free_port,
    service_env,
    start_api,
    wait_healthy,
)

pytestmark = pytest.mark.slow
PASSWORD = "plum quartz lantern 7319 orbit"  # strong enough for any password policy


class Cli:
    """Runs `crunchql` with its own config directory (XDG_CONFIG_HOME)."""

    def __init__(self, config_home: Path) -> None:
        self.env = {
            key: value for key, value in os.environ.items() if not key.startswith("CRUNCHQL_")
        }
        self.env["XDG_CONFIG_HOME"] = str(config_home)
        self.credentials = config_home / "crunchql" / "credentials.json"

    def args(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "crunchql", *args]

    def __call__(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.args(*args), input=stdin, capture_output=True, text=True, cwd=ROOT,
            env=self.env, timeout=180, check=False,
        )  # fmt: skip

    def stored(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.credentials.read_text())
        return data


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with embedded_api(tmp_path_factory.mktemp("cli-server")) as base:
        yield f"http://{base}"


@pytest.fixture
def cli(tmp_path: Path, server: str) -> Cli:
    client = Cli(tmp_path / "config")
    email = f"cli-{uuid.uuid4().hex[:8]}@example.com"
    done = client("login", "--url", server, "--email", email, "--create", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    return client


def test_login_stores_url_and_tokens_for_the_owner_only(cli: Cli, server: str) -> None:
    mode = stat.S_IMODE(cli.credentials.stat().st_mode)
    assert mode == 0o600
    stored = cli.stored()
    assert stored["url"] == server and stored["access_token"] and stored["refresh_token"]
    assert PASSWORD not in cli.credentials.read_text()


def test_submit_follow_json_prints_only_the_final_calculation(cli: Cli) -> None:
    done = cli("submit", "monteCarloPi", "samples=60000000", "seed=3", "--follow", "--json")
    assert done.returncode == 0, done.stderr
    final = json.loads(done.stdout)  # one document, nothing else
    assert final["status"] == "SUCCEEDED" and final["input"] == {"samples": 60000000, "seed": 3}
    result = final["result"]
    assert abs(result["estimate"] - math.pi) < 5 * result["standardError"]
    assert "SUCCEEDED 100.0%" in done.stderr  # the progress went to stderr
    listed = cli("list", "--status", "SUCCEEDED", "--json")  # no --url: the stored one
    assert listed.returncode == 0, listed.stderr
    assert [row["id"] for row in json.loads(listed.stdout)] == [final["id"]]
    table = cli("list", "--first", "0")
    assert table.returncode == 0 and "0 of 1 calculations" in table.stderr


def test_input_json_and_fields_combine(cli: Cli) -> None:
    done = cli(
        "submit", "mandelbrot", "--input", '{"width": 32, "height": 24}', "maxIterations=40",
        "--follow", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    final = json.loads(done.stdout)
    assert final["input"]["width"] == 32 and final["input"]["maxIterations"] == 40
    assert final["result"]["width"] == 32 and final["result"]["png"]


def test_exit_codes(cli: Cli, server: str) -> None:
    assert cli("submit", "monteCarloPi", "samples=0").returncode == 2  # BAD_USER_INPUT
    bad = cli("submit", "monteCarloPi", "samples")
    assert bad.returncode == 2 and "field=value" in bad.stderr
    assert cli("submit", "noSuchKind", "x=1").returncode == 2
    assert cli("watch").returncode == 2  # argparse
    submitted = cli("submit", "monteCarloPi", "samples=10000000000")
    assert submitted.returncode == 0, submitted.stderr
    calculation_id = submitted.stdout.strip()
    assert cli("cancel", calculation_id).returncode == 0
    watched = cli("watch", calculation_id, "--json")
    assert watched.returncode == 3 and json.loads(watched.stdout)["status"] == "CANCELLED"
    assert cli("cancel", calculation_id).returncode == 1  # CONFLICT: already finished
    assert cli("watch", str(uuid.uuid4())).returncode == 1  # NOT_FOUND
    wrong = cli("login", "--url", server, "--email", "nobody@example.com", stdin="nope\n")
    assert wrong.returncode == 4
    closed = f"http://127.0.0.1:{free_port()}"
    unreachable = cli("login", "--url", closed, "--email", "x@example.com", stdin="pw\n")
    assert unreachable.returncode == 4 and "cannot reach" in unreachable.stderr


def test_an_expired_access_token_is_refreshed(cli: Cli) -> None:
    stored = cli.stored()
    cli.credentials.write_text(json.dumps({**stored, "access_token": "expired"}))
    done = cli("list", "--json")
    assert done.returncode == 0, done.stderr
    rotated = cli.stored()
    assert rotated["access_token"] != "expired"
    assert rotated["refresh_token"] != stored["refresh_token"]  # rotated and saved
    assert stat.S_IMODE(cli.credentials.stat().st_mode) == 0o600


def test_logout_forgets_the_tokens(cli: Cli) -> None:
    assert cli("logout").returncode == 0
    assert not cli.credentials.exists()
    refused = cli("list")
    assert refused.returncode == 4 and "crunchql login" in refused.stderr


async def test_watch_resumes_after_the_server_restarts(tmp_path: Path) -> None:
    from crunchql.db.migrate import upgrade_async

    url = f"sqlite+aiosqlite:///{tmp_path / 'restart.sqlite3'}"
    await upgrade_async(url)
    env, port = service_env(url, None), free_port()
    api, base = start_api(env, tmp_path, port)
    cli = Cli(tmp_path / "config")
    try:
        await wait_healthy(base, api)
        login = cli(
            "login", "--url", f"http://{base}", "--email", "r@example.com", "--create",
            stdin=PASSWORD + "\n",
        )  # fmt: skip
        assert login.returncode == 0, login.stderr
        submitted = cli("submit", "monteCarloPi", "samples=4000000000", "seed=5")
        calculation_id = submitted.stdout.strip()
        watch = subprocess.Popen(
            cli.args("watch", calculation_id, "--json"), cwd=ROOT, env=cli.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert watch.stderr is not None
        deadline = time.monotonic() + 120
        lines: list[str] = []
        while not any("RUNNING" in line for line in lines):  # it is following
            assert time.monotonic() < deadline, lines
            lines.append(await asyncio.to_thread(watch.stderr.readline))
        api.stop()  # graceful: the run is handed back, QUEUED again
        api, _ = start_api(env, tmp_path, port)
        await wait_healthy(base, api)
        stdout, stderr = await asyncio.to_thread(watch.communicate, timeout=180)
        assert watch.returncode == 0, stderr
        assert "connection lost" in "".join(lines) + stderr
        assert json.loads(stdout)["status"] == "SUCCEEDED"
    finally:
        if "watch" in locals() and watch.poll() is None:
            watch.send_signal(signal.SIGTERM)
            watch.wait(10)
        api.stop()


def test_the_client_loads_none_of_the_server() -> None:
    code = (
        "import sys, crunchql.cli.main, crunchql.cli.client\n"
        "heavy = ('numba', 'llvmlite', 'sqlalchemy', 'strawberry', 'dramatiq', 'crunchql.db',"
        " 'crunchql.services', 'crunchql.compute', 'crunchql.schema')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.strip() == "[]"
