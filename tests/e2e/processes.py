"""Real processes for end-to-end tests: Uvicorn via `crunchql serve`, `crunchql worker`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
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
        self.metrics_port: int | None = None
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
        """SIGTERM to the main process only, as `docker stop` and Kubernetes do (it
        passes it on to its own processes; a second SIGTERM straight to a Dramatiq
        worker process means "die now"), then SIGKILL to the group after ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.process.wait(5)
        self._log.close()


class PrivateRedis:
    """A redis-server of the stack's own, on a free port.

    Not the shared TEST_REDIS_URL server: a test here stops and restarts Redis, which
    (with nothing persisted) wipes every database of that server, and pub/sub channels
    are server-wide, not per database. A stack on its own server neither disturbs other
    suites running on the machine nor loses its queue to their restarts.
    """

    def __init__(self, log_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
                pytest.fail("redis-server is not installed: CI=true requires it")
            pytest.skip("!!! redis-server is not installed: skipping (runs in CI)")
        self.binary = binary
        self.log_dir = log_dir
        self.port = free_port()
        self.process = self._spawn()

    @classmethod
    async def start(cls, log_dir: Path) -> PrivateRedis:
        """A server that answers (or stopped again, and the error raised)."""
        redis = cls(log_dir)
        try:
            await redis.wait()
        except BaseException:
            redis.stop()
            raise
        return redis

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _spawn(self) -> ServiceProcess:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no"]
        return ServiceProcess("redis", args, dict(os.environ), self.log_dir)

    async def wait(self) -> None:
        from redis.asyncio import Redis
        from redis.exceptions import ConnectionError as RedisConnectionError

        async def ping() -> bool:
            client = Redis.from_url(self.url)
            try:
                return bool(await client.ping())
            except (RedisConnectionError, OSError):
                return False  # not listening yet
            finally:
                await client.aclose()

        await wait_until(ping, MARGIN_SECONDS, "redis-server to answer", self.process)

    def stop(self) -> None:
        self.process.stop()

    async def restart(self) -> None:
        """A fresh, empty server on the same port (as a Redis restart without
        persistence is)."""
        self.process = self._spawn()
        await self.wait()


def start_api(
    env: dict[str, str], log_dir: Path, port: int | None = None
) -> tuple[ServiceProcess, str]:
    port = port or free_port()
    process = ServiceProcess(
        "api", [*CRUNCHQL, "serve", "--host", "127.0.0.1", "--port", str(port)], env, log_dir
    )
    return process, f"127.0.0.1:{port}"


def start_worker(
    env: dict[str, str], log_dir: Path, *, threads: int = 2, device: str = "cpu"
) -> ServiceProcess:
    # A port of its own for the worker's /metrics: tests run next to other stacks.
    port = free_port()
    process = ServiceProcess(
        "worker" if device == "cpu" else f"worker-{device}",
        [*CRUNCHQL, "worker", "--processes", "1", "--threads", str(threads), "--device", device],
        {**env, "CRUNCHQL_WORKER_METRICS_PORT": str(port)},
        log_dir,
    )
    process.metrics_port = port
    return process


# --- deadlines ------------------------------------------------------------------------
#
# Every wait below has a deadline derived from what it waits for, sized for the CI
# machine (2 cores) with one core kept busy by something else and several of our own
# processes competing for the other: LOAD_FACTOR times the idle figure, plus a margin.

LOAD_FACTOR = 4.0
MARGIN_SECONDS = 30.0
KERNEL_COMPILE_SECONDS = 20.0
"""One kind's kernels compiled cold (empty NUMBA_CACHE_DIR), idle 2 cores."""
WORKER_BOOT_SECONDS = 10.0
"""Python, numba and every kernel loaded from the cache, idle 2 cores."""
JOB_START_SECONDS = 5.0
"""A warm, idle worker takes a queued job and stores its first chunk's progress."""
PI_SECONDS_PER_SAMPLE = 1.5e-9
"""monteCarloPi on 2 idle cores (compute/config.py's cost model: ~1-1.5 ns per sample)."""


def worker_boot_deadline(kinds: int) -> float:
    """A worker that may have to compile every kind's kernels (a fresh clone)."""
    return LOAD_FACTOR * (WORKER_BOOT_SECONDS + kinds * KERNEL_COMPILE_SECONDS) + MARGIN_SECONDS


def pi_deadline(samples: int) -> float:
    """A monteCarloPi run of ``samples`` on a warm worker, from queued to finished."""
    return LOAD_FACTOR * samples * PI_SECONDS_PER_SAMPLE + MARGIN_SECONDS


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


async def readyz(base: str) -> tuple[int, dict[str, Any]]:
    """(status code, body) of an API process's /readyz."""
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://{base}/readyz")
    body: dict[str, Any] = response.json()
    return response.status_code, body


async def wait_for_workers(
    base: str, count: int = 1, process: ServiceProcess | None = None, *, timeout: float
) -> dict[str, Any]:
    """Until /readyz of the API at ``base`` counts at least ``count`` live workers.

    A worker warms every kernel before its first heartbeat, so a live worker runs a
    job without compiling anything. /readyz itself says 200 as soon as the API can
    serve, worker or not: readiness is not the way to wait for a worker.
    """

    async def check() -> dict[str, Any] | None:
        status, body = await readyz(base)
        alive = body.get("workers", {}).get("alive") or 0
        return body if status == 200 and alive >= count else None

    result: dict[str, Any] = await wait_until(
        check, timeout, f"{count} live worker(s) in /readyz", process
    )
    return result


async def calculation_kinds(base: str) -> int:
    """How many kinds the API offers (each one a set of kernels a worker compiles)."""
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"http://{base}/graphql", json={"query": "{ calculationKinds { name } }"}
        )
    return len(response.json()["data"]["calculationKinds"])


async def wait_ready(
    base: str, process: ServiceProcess | None = None, timeout: float = 180
) -> dict[str, Any]:
    """The API is ready and has a live worker (benchmarks/service.py waits on this)."""
    return await wait_for_workers(base, 1, process, timeout=timeout)


@contextmanager
def paused(processes: list[ServiceProcess]) -> Iterator[None]:
    """Freeze processes (SIGSTOP to their process groups) for the block, then let them
    go on: e.g. a subscriber gets in place before a worker may start a job, whatever
    the machine's speed. Keep the block short: a frozen worker sends no heartbeat."""
    for process in processes:
        process.kill(signal.SIGSTOP)
    try:
        yield
    finally:
        for process in processes:
            process.kill(signal.SIGCONT)


class HttpGraphQL:
    def __init__(
        self,
        base: str,
        scheme: str = "http",
        verify: Any = True,
        *,
        local_address: str | None = None,
    ) -> None:
        """``local_address``: connect from this address (any 127.x.y.z on loopback), to
        be a different client as far as per-address limits go."""
        self.url = f"{scheme}://{base}/graphql"
        transport = (
            httpx.AsyncHTTPTransport(local_address=local_address, verify=verify)
            if local_address
            else None
        )
        self.http = httpx.AsyncClient(timeout=30, verify=verify, transport=transport)
        self.token: str | None = None

    async def execute(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        response = await self.http.post(
            self.url, json={"query": query, "variables": variables or {}}, headers=headers
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def try_register(
        self, email: str | None = None, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """The register mutation's whole answer (data or errors)."""
        return await self.execute(
            'mutation($e: String!) { register(email: $e, password: "correct horse battery") '
            "{ accessToken } }",
            {"e": email or f"e2e-{uuid.uuid4().hex[:10]}@example.com"},
            headers,
        )

    async def register(self) -> str:
        body = await self.try_register()
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
        open_timeout=MARGIN_SECONDS,
    ) as socket_:
        payload = {"Authorization": f"Bearer {token}"} if token else {}
        await socket_.send(json.dumps({"type": "connection_init", "payload": payload}))
        ack = json.loads(await asyncio.wait_for(socket_.recv(), MARGIN_SECONDS))
        assert ack["type"] == "connection_ack", ack
        yield socket_


async def collect_updates(
    socket_: Any,
    calculation_id: str,
    timeout: float = 120,
    op_id: str = "1",
    *,
    started: asyncio.Event | None = None,
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Subscribe to calculationUpdates and gather every event until `complete`.

    ``started`` is set on the first answer (the calculation as it stands): from then on
    the subscription receives every change."""
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
            if started is not None:
                started.set()
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


TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


async def wait_running(
    graphql: HttpGraphQL,
    calculation_id: str,
    process: ServiceProcess | None = None,
    timeout: float = LOAD_FACTOR * JOB_START_SECONDS + MARGIN_SECONDS,
) -> dict[str, Any]:
    """Until the calculation is RUNNING with stored progress (its first chunk is done).

    Fails at once when it is already finished: a test that means to act on a running
    job must size it to outlast its own reaction, not wait for a state that is gone.
    """

    async def check() -> dict[str, Any] | None:
        calc = await graphql.get(calculation_id, "id status progress attempts")
        if calc["status"] in TERMINAL:
            raise AssertionError(f"the calculation ended before it was seen running: {calc}")
        return calc if calc["status"] == "RUNNING" and calc["progress"] > 0 else None

    result: dict[str, Any] = await wait_until(check, timeout, "the job to be under way", process)
    return result


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
