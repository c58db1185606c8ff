"""Real processes for end-to-end tests: Uvicorn via `crunchql serve`, `crunchql worker`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import websockets

ROOT = Path(__file__).resolve().parents[2]
CRUNCHQL = [sys.executable, "-m", "crunchql"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(database_url: str, redis_url: str | None, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CRUNCHQL_", "DATABASE_URL", "REDIS_URL"))
    }
    env.update(
        {
            "DATABASE_URL": database_url,
            "CRUNCHQL_JWT_SECRET": "e2e-secret-" + "x" * 40,
            "CRUNCHQL_RATE_LIMITS": "off",
            "CRUNCHQL_LOG_LEVEL": "INFO",
            "CRUNCHQL_WORKER_HEARTBEAT_SECONDS": "1",
            "CRUNCHQL_WORKER_STALE_SECONDS": "6",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


class ServiceProcess:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a worker forks its processes)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.process.wait(5)
        self._log.close()


def start_api(
    env: dict[str, str], log_dir: Path, port: int | None = None
) -> tuple[ServiceProcess, str]:
    port = port or free_port()
    process = ServiceProcess(
        "api", [*CRUNCHQL, "serve", "--host", "127.0.0.1", "--port", str(port)], env, log_dir
    )
    return process, f"127.0.0.1:{port}"


def start_worker(env: dict[str, str], log_dir: Path, *, threads: int = 2) -> ServiceProcess:
    return ServiceProcess(
        "worker", [*CRUNCHQL, "worker", "--processes", "1", "--threads", str(threads)], env, log_dir
    )


async def wait_until(
    check: Any, timeout: float, what: str, process: ServiceProcess | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if process is not None and process.process.poll() is not None:
            raise AssertionError(
                f"{process.name} exited while waiting for {what}:\n{process.log()}"
            )
        try:
            last = await check()
            if last:
                return last
        except (httpx.HTTPError, OSError) as error:
            last = error
        await asyncio.sleep(0.1)
    log = process.log() if process else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})\n{log}")


async def wait_healthy(base: str, process: ServiceProcess, timeout: float = 60) -> None:
    async with httpx.AsyncClient() as http:

        async def check() -> bool:
            return (await http.get(f"http://{base}/healthz")).status_code == 200

        await wait_until(check, timeout, "API /healthz", process)


async def wait_ready(
    base: str, process: ServiceProcess | None = None, timeout: float = 180
) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:

        async def check() -> dict[str, Any] | None:
            response = await http.get(f"http://{base}/readyz")
            return response.json() if response.status_code == 200 else None

        result: dict[str, Any] = await wait_until(check, timeout, "/readyz 200", process)
        return result


class HttpGraphQL:
    def __init__(self, base: str, scheme: str = "http", verify: Any = True) -> None:
        self.url = f"{scheme}://{base}/graphql"
        self.http = httpx.AsyncClient(timeout=30, verify=verify)
        self.token: str | None = None

    async def execute(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        response = await self.http.post(
            self.url, json={"query": query, "variables": variables or {}}, headers=headers
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def register(self) -> str:
        body = await self.execute(
            'mutation($e: String!) { register(email: $e, password: "correct horse battery") '
            "{ accessToken } }",
            {"e": f"e2e-{uuid.uuid4().hex[:10]}@example.com"},
        )
        assert "errors" not in body, body
        self.token = body["data"]["register"]["accessToken"]
        return self.token

    async def submit(self, calculation_input: dict[str, Any]) -> dict[str, Any]:
        body = await self.execute(
            "mutation($i: CalculationInput!) { submitCalculation(input: $i) { id status input } }",
            {"i": calculation_input},
        )
        assert "errors" not in body, body
        result: dict[str, Any] = body["data"]["submitCalculation"]
        return result

    async def get(
        self, calculation_id: str, fields: str = "id status progress error"
    ) -> dict[str, Any]:
        body = await self.execute(
            f"query($id: ID!) {{ calculation(id: $id) {{ {fields} }} }}", {"id": calculation_id}
        )
        assert "errors" not in body, body
        result: dict[str, Any] = body["data"]["calculation"]
        return result

    async def close(self) -> None:
        await self.http.aclose()


UPDATES = """
subscription($id: ID!) {
  calculationUpdates(id: $id) {
    id status progress error attempts
    partialResult { __typename ... on MonteCarloPiResult { estimate standardError }
                    ... on OptionPricingResult { price standardError } }
    result { __typename
      ... on MonteCarloPiResult { estimate standardError samples }
      ... on OptionPricingResult { price standardError confidenceLow confidenceHigh analyticPrice }
      ... on PrimeCountResult { limit count }
      ... on MandelbrotResult { width height insideFraction png }
      ... on NBodyResult { bodies steps initialEnergy finalEnergy relativeEnergyError }
      ... on KMeansResult { k iterations converged inertia centroids recoveredFraction } }
  }
}
"""


@asynccontextmanager
async def ws_session(
    base: str, token: str | None, scheme: str = "ws", ssl: Any = None
) -> AsyncIterator[Any]:
    """A graphql-transport-ws connection, initialised (connection_ack received)."""
    async with websockets.connect(
        f"{scheme}://{base}/graphql",
        subprotocols=["graphql-transport-ws"],
        ssl=ssl,
        open_timeout=10,
    ) as socket_:
        payload = {"Authorization": f"Bearer {token}"} if token else {}
        await socket_.send(json.dumps({"type": "connection_init", "payload": payload}))
        ack = json.loads(await asyncio.wait_for(socket_.recv(), 10))
        assert ack["type"] == "connection_ack", ack
        yield socket_


async def collect_updates(
    socket_: Any, calculation_id: str, timeout: float = 120, op_id: str = "1"
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Subscribe to calculationUpdates and gather every event until `complete`."""
    await socket_.send(
        json.dumps(
            {
                "id": op_id,
                "type": "subscribe",
                "payload": {"query": UPDATES, "variables": {"id": calculation_id}},
            }
        )
    )
    events: list[dict[str, Any]] = []
    errors: list[Any] = []
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await socket_.recv())
            if message.get("id") != op_id:
                continue
            if message["type"] == "next":
                if message["payload"].get("errors"):
                    errors.extend(message["payload"]["errors"])
                if message["payload"].get("data"):
                    events.append(message["payload"]["data"]["calculationUpdates"])
            elif message["type"] == "error":
                errors.extend(message["payload"])
                return events, errors
            elif message["type"] == "complete":
                return events, errors


@asynccontextmanager
async def embedded_api(directory: Path, **extra: str) -> AsyncIterator[str]:
    """`crunchql serve` on SQLite with the in-process queue and bus; yields host:port."""
    from crunchql.db.migrate import upgrade_async

    url = f"sqlite+aiosqlite:///{directory / 'crunchql.sqlite3'}"
    await upgrade_async(url)
    api, base = start_api(service_env(url, None, **extra), directory)
    try:
        await wait_healthy(base, api)
        yield base
    finally:
        api.stop()
