"""The production topology on this machine, without Docker: nginx (deploy/nginx/nginx.conf)
terminating TLS in front of two Uvicorn API processes and two `crunchql worker`
processes, on the real PostgreSQL and Redis; and nginx in front of an API with the
production rate limits on, for what a hostile client can and cannot do through it."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import truncate
from tests.e2e.nginx import local_config, nginx_binary
from tests.e2e.processes import (
    LOAD_FACTOR,
    MARGIN_SECONDS,
    HttpGraphQL,
    PrivateRedis,
    ServiceProcess,
    calculation_kinds,
    collect_updates,
    free_port,
    paused,
    pi_deadline,
    service_env,
    start_api,
    start_worker,
    wait_for_workers,
    wait_healthy,
    wait_running,
    wait_until,
    worker_boot_deadline,
    ws_session,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

# A job the test stops mid-run: 60 chunks, ~4-6 s on 2 idle cores, seen running after
# its first chunk, so 59 chunks are left to outlast the test's reaction.
# The largest monteCarloPi: 3.3 s on one worker of 2 idle cores here, longer under load,
# to outlast a stop's reaction (Dramatiq's worker process notices within a second).
INTERRUPTED_SAMPLES = 10_000_000_000


@dataclass
class Topology:
    database_url: str
    redis: PrivateRedis
    workdir: Path
    apis: list[tuple[ServiceProcess, str]]
    workers: list[ServiceProcess]
    nginx: ServiceProcess
    http_port: int
    https_port: int
    certificate: Path

    @property
    def front(self) -> str:
        return f"127.0.0.1:{self.https_port}"

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certificate))

    def graphql(self) -> HttpGraphQL:
        client = HttpGraphQL(self.front, scheme="https", verify=self.ssl_context())
        return client

    def upstream_of(self, request_id: str) -> str:
        """Which API process nginx sent a request to, from its JSON access log."""
        for line in (self.workdir / "access.log").read_text().splitlines():
            entry = json.loads(line)
            if entry["request_id"] == request_id:
                return str(entry["upstream"])
        raise AssertionError(f"request {request_id} is not in nginx's access log")

    def logs(self) -> str:
        processes = [self.nginx, *(api for api, _ in self.apis), *self.workers]
        return "\n".join(f"===== {p.name} =====\n{p.log()[-4000:]}" for p in processes)


def start_nginx(
    binary: str, workdir: Path, upstreams: list[str], env: dict[str, str]
) -> tuple[ServiceProcess, int, int]:
    http_port, https_port = free_port(), free_port()
    conf = local_config(
        binary, workdir, upstreams=upstreams,
        http_port=http_port, https_port=https_port, single_worker=True,
    )  # fmt: skip
    nginx = ServiceProcess(
        "nginx", [binary, "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"], env, workdir
    )
    return nginx, http_port, https_port


@pytest.fixture(scope="module")
async def topology(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Topology]:
    binary = nginx_binary()
    await truncate(postgres_url)
    workdir = tmp_path_factory.mktemp("topology")
    redis = await PrivateRedis.start(workdir)
    # Calculations run whole here, never split into shards (tests/e2e/test_shards.py
    # covers those): the stop test needs its job on the one worker it stops. Split, the
    # stopped worker was sometimes between shards, handed nothing back, and the test
    # failed (the default CRUNCHQL_SHARD_SECONDS of 2 splits 10^10 samples in ten).
    env = service_env(postgres_url, redis.url, CRUNCHQL_SHARD_SECONDS="0")
    apis = [start_api(env, workdir) for _ in range(2)]
    workers = [start_worker(env, workdir) for _ in range(2)]
    nginx, http_port, https_port = start_nginx(binary, workdir, [base for _, base in apis], env)
    result = Topology(
        postgres_url, redis, workdir, apis, workers, nginx, http_port, https_port,
        workdir / "certs" / "tls.crt",
    )  # fmt: skip
    try:
        for api, base in apis:
            await wait_healthy(base, api)
        # Both may compile every kind's kernels (a fresh clone), side by side.
        deadline = 2 * worker_boot_deadline(await calculation_kinds(apis[0][1]))
        await wait_for_workers(apis[0][1], len(workers), workers[0], timeout=deadline)
        yield result
    finally:
        for process in [nginx, *result.workers, *(api for api, _ in apis)]:
            process.stop()
        redis.stop()


async def test_http_redirects_to_https(topology: Topology) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{topology.http_port}/graphql")
    assert response.status_code == 301
    assert response.headers["location"].startswith("https://")


async def test_security_headers_are_sent_once_whoever_answers(topology: Topology) -> None:
    """The application's own headers pass through unchanged (the console's strict CSP,
    no-referrer) and nginx adds its defaults only to responses that have none."""
    names = ("x-content-type-options", "x-frame-options", "content-security-policy")
    async with httpx.AsyncClient(verify=topology.ssl_context()) as http:
        console = await http.get(f"https://{topology.front}/")
        missing = await http.get(f"https://{topology.front}/no-such-page")
        own = await http.get(f"https://{topology.front}/metrics")  # nginx's own 404
    assert own.status_code == 404
    for response in (console, missing, own):
        for name in (*names, "referrer-policy"):
            assert len(response.headers.get_list(name)) == 1, (response.url, name)
    assert console.headers["referrer-policy"] == "no-referrer"
    assert "script-src" in console.headers["content-security-policy"]
    assert own.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert len(console.headers.get_list("strict-transport-security")) == 1


async def test_submit_through_nginx_and_watch_from_both_api_processes(topology: Topology) -> None:
    graphql = topology.graphql()
    await graphql.register()
    tls = topology.ssl_context()
    # Two sockets opened one after the other: nginx's round robin puts them on the two
    # API processes, so whichever one takes the submit, one socket is on the other.
    async with (
        ws_session(topology.front, graphql.token, scheme="wss", ssl=tls) as first,
        ws_session(topology.front, graphql.token, scheme="wss", ssl=tls) as second,
    ):
        submit_id = uuid.uuid4().hex
        # 30 chunks, ~2-3 s on 2 idle cores: some 20-30 progress publish intervals.
        samples = 2_000_000_000
        listening = [asyncio.Event(), asyncio.Event()]
        # The workers wait until both subscribers are in place: each sees the whole run,
        # however fast this machine runs it.
        with paused(topology.workers):
            response = await graphql.http.post(
                graphql.url,
                json={
                    "query": "mutation($i: CalculationInput!) "
                    "{ submitCalculation(input: $i) { id } }",
                    "variables": {"i": {"monteCarloPi": {"samples": samples, "seed": 8}}},
                },
                headers={"Authorization": f"Bearer {graphql.token}", "X-Request-ID": submit_id},
            )
            assert response.headers["strict-transport-security"].startswith("max-age=")
            calculation_id = response.json()["data"]["submitCalculation"]["id"]
            updates = asyncio.gather(
                *(
                    collect_updates(socket_, calculation_id, pi_deadline(samples), started=event)
                    for socket_, event in zip((first, second), listening, strict=True)
                )
            )
            await asyncio.wait_for(
                asyncio.gather(*(event.wait() for event in listening)), MARGIN_SECONDS
            )
        results = await updates
    for events, errors in results:
        assert errors == [], topology.logs()
        assert events[0]["status"] == "QUEUED", events[0]  # there before the run began
        assert events[-1]["status"] == "SUCCEEDED", topology.logs()
        progress = [event["progress"] for event in events]
        assert progress == sorted(progress)
        assert len([p for p in progress if 0 < p < 1]) >= 2  # live progress on both
        result = events[-1]["result"]
        assert abs(result["estimate"] - math.pi) < 5 * result["standardError"]
    # Both processes saw the same stream of progress.
    assert [e["progress"] for e in results[0][0]][-1] == [e["progress"] for e in results[1][0]][-1]
    # nginx's log: the sockets were on different API processes, the submit on one of them.
    lines = [
        json.loads(line) for line in (topology.workdir / "access.log").read_text().splitlines()
    ]
    socket_upstreams = {entry["upstream"] for entry in lines if entry["status"] == 101}
    assert len(socket_upstreams) == 2, socket_upstreams
    assert topology.upstream_of(submit_id) in socket_upstreams
    await graphql.close()


async def test_readyz_follows_redis(topology: Topology) -> None:
    async with httpx.AsyncClient(verify=topology.ssl_context()) as http:
        url = f"https://{topology.front}/readyz"

        async def status() -> int:
            return (await http.get(url)).status_code

        assert await status() == 200
        assert (await http.get(url)).json()["workers"]["alive"] == len(topology.workers)
        topology.redis.stop()
        try:
            down = await wait_until(
                lambda: _status_is(http, url, 503), 30, "/readyz to say 503 without Redis"
            )
            assert down["checks"]["redis"]["ok"] is False
            assert down["checks"]["database"]["ok"] is True
        finally:
            await topology.redis.restart()
        up = await wait_until(lambda: _status_is(http, url, 200), 60, "/readyz back to 200")
        assert up["checks"]["redis"]["ok"] is True


async def _status_is(http: httpx.AsyncClient, url: str, code: int) -> dict[str, Any] | None:
    response = await http.get(url)
    return response.json() if response.status_code == code else None  # type: ignore[no-any-return]


async def test_stopping_a_worker_mid_job_loses_nothing(topology: Topology) -> None:
    graphql = topology.graphql()
    await graphql.register()
    submitted = await graphql.submit({"monteCarloPi": {"samples": INTERRUPTED_SAMPLES, "seed": 6}})
    await wait_running(graphql, submitted["id"])

    async def owner_pid() -> int | None:
        engine = create_async_engine(topology.database_url)
        async with engine.connect() as connection:
            worker_id = (
                await connection.execute(
                    text("SELECT worker_id FROM calculations WHERE id = :id"),
                    {"id": uuid.UUID(submitted["id"])},
                )
            ).scalar_one()
        await engine.dispose()
        return int(worker_id.split(":")[1]) if worker_id else None

    pid = await owner_pid()
    assert pid is not None
    running_on = next(w for w in topology.workers if os.getpgid(pid) == w.process.pid)
    # A normal stop (deploy, scale down): SIGTERM to the worker's main process, which
    # passes it on to its worker processes, as `docker stop` or Kubernetes would.
    running_on.process.send_signal(signal.SIGTERM)
    async with ws_session(
        topology.front, graphql.token, scheme="wss", ssl=topology.ssl_context()
    ) as socket_:
        events, errors = await collect_updates(
            socket_, submitted["id"], timeout=pi_deadline(INTERRUPTED_SAMPLES) * 2
        )
    assert errors == [], topology.logs()
    assert events[-1]["status"] == "SUCCEEDED", topology.logs()
    assert events[-1]["attempts"] == 2, topology.logs()  # handed back, finished elsewhere
    # The stopped worker exited without waiting for the job.
    running_on.process.wait(LOAD_FACTOR * 5 + MARGIN_SECONDS)
    running_on.stop()
    topology.workers.remove(running_on)
    await graphql.close()


async def test_the_fleet_serves_with_every_worker_gone(topology: Topology) -> None:
    """Workers consume the queue; the API does not depend on them. With none alive,
    users still log in, read their results and queue work, /readyz stays 200 (and says
    so in its body), and workers that come back run what was queued."""
    graphql = topology.graphql()
    email = f"e2e-{uuid.uuid4().hex[:10]}@example.com"
    assert "errors" not in await graphql.try_register(email)
    graphql.token = None
    finished = await _login_and_submit(graphql, email, 10_000)
    await wait_until(
        lambda: _status_of(graphql, finished, "SUCCEEDED"), pi_deadline(10_000), "a first job"
    )
    for worker in topology.workers:
        worker.stop()  # SIGTERM: a worker says goodbye (its heartbeat row goes)
    topology.workers.clear()
    url = f"https://{topology.front}/readyz"
    async with httpx.AsyncClient(verify=topology.ssl_context()) as http:

        async def no_worker() -> dict[str, Any] | None:
            response = await http.get(url)
            assert response.status_code == 200, response.text  # ready all along
            body: dict[str, Any] = response.json()
            return body if body["workers"]["alive"] == 0 else None

        # At the latest when the last heartbeat is stale (CRUNCHQL_WORKER_STALE_SECONDS).
        body = await wait_until(no_worker, LOAD_FACTOR * 6 + MARGIN_SECONDS, "no live worker")
    assert body["status"] == "ready" and body["workers"] == {
        "embedded": False,
        "alive": 0,
        "gpu": 0,
    }
    # Log in again, read the finished result, queue a new calculation.
    graphql.token = None
    queued = await _login_and_submit(graphql, email, 20_000)
    result = await graphql.get(finished, "status result { ... on MonteCarloPiResult { samples } }")
    assert result == {"status": "SUCCEEDED", "result": {"samples": 10_000}}
    assert (await graphql.get(queued))["status"] == "QUEUED"
    # Workers return: /readyz counts them, and the queued calculation runs.
    env = service_env(topology.database_url, topology.redis_url, CRUNCHQL_SHARD_SECONDS="0")
    topology.workers.extend(start_worker(env, topology.workdir) for _ in range(2))
    boot = worker_boot_deadline(0)  # kernels from the cache this session filled
    body = await wait_for_workers(topology.apis[0][1], 2, topology.workers[0], timeout=boot)
    assert body["workers"]["alive"] >= 2
    # Its message waits in Redis for them. (A worker that boots with messages waiting
    # can fail the first one before its runtime exists: "worker runtime not started", a
    # workers/lifecycle.py race. The sweep then re-sends the still QUEUED calculation once
    # it is QUEUED_RESEND_AFTER old, so it runs all the same, a minute later.)
    from crunchql.workers.lifecycle import QUEUED_RESEND_AFTER, SWEEP_INTERVAL_SECONDS

    resend = QUEUED_RESEND_AFTER.total_seconds() + SWEEP_INTERVAL_SECONDS
    await wait_until(
        lambda: _status_of(graphql, queued, "SUCCEEDED"),
        resend + pi_deadline(20_000),
        "the queued job to run on the returning workers",
    )
    await graphql.close()


async def _login_and_submit(graphql: HttpGraphQL, email: str, samples: int) -> str:
    body = await graphql.execute(
        'mutation($e: String!) { login(email: $e, password: "correct horse battery") '
        "{ accessToken } }",
        {"e": email},
    )
    assert "errors" not in body, body
    graphql.token = body["data"]["login"]["accessToken"]
    submitted = await graphql.submit({"monteCarloPi": {"samples": samples}})
    return str(submitted["id"])


async def _status_of(graphql: HttpGraphQL, calculation_id: str, status: str) -> bool:
    return (await graphql.get(calculation_id))["status"] == status


# --- what a hostile client can do through nginx ------------------------------------------

REGISTER_LIMIT = 3


@dataclass
class Front:
    """nginx in front of one API with the production rate limits (no worker needed)."""

    nginx: ServiceProcess
    api: ServiceProcess
    api_base: str
    https_port: int
    certificate: Path

    @property
    def front(self) -> str:
        return f"127.0.0.1:{self.https_port}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certificate))

    def client(self, local_address: str, *, direct: bool = False) -> HttpGraphQL:
        """A client connecting from ``local_address`` (a loopback address of its own),
        through nginx or (``direct``) straight to the API."""
        if direct:
            return HttpGraphQL(self.api_base, local_address=local_address)
        return HttpGraphQL(
            self.front, scheme="https", verify=self.ssl_context(), local_address=local_address
        )


@pytest.fixture(scope="module")
async def limited_front(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Front]:
    binary = nginx_binary()
    workdir = tmp_path_factory.mktemp("limited")
    redis = await PrivateRedis.start(workdir)
    env = service_env(
        postgres_url,
        redis.url,
        CRUNCHQL_RATE_LIMITS="on",
        CRUNCHQL_REGISTER_ATTEMPTS_PER_ADDRESS=str(REGISTER_LIMIT),
        # nginx's address and nothing else, as docker-compose.yml does.
        FORWARDED_ALLOW_IPS="127.0.0.1",
    )
    api, base = start_api(env, workdir)
    nginx, _, https_port = start_nginx(binary, workdir, [base], env)
    try:
        await wait_healthy(base, api)
        yield Front(nginx, api, base, https_port, workdir / "certs" / "tls.crt")
    finally:
        nginx.stop()
        api.stop()
        redis.stop()


async def _register_outcomes(graphql: HttpGraphQL, attempts: int) -> list[str]:
    """Register attempts, each claiming another address in X-Forwarded-For (and
    X-Real-IP): "ok" or the error code."""
    outcomes = []
    for attempt in range(attempts):
        spoofed = f"198.51.100.{attempt + 1}"
        body = await graphql.try_register(
            headers={"X-Forwarded-For": spoofed, "X-Real-IP": spoofed}
        )
        errors = body.get("errors") or [{}]
        outcomes.append("ok" if "errors" not in body else errors[0]["extensions"]["code"])
    return outcomes


async def test_a_client_written_forwarded_for_does_not_change_its_address(
    limited_front: Front,
) -> None:
    attempts = REGISTER_LIMIT + 3
    expected = ["ok"] * REGISTER_LIMIT + ["RATE_LIMITED"] * 3
    # Through nginx: an ordinary client, and one whose address is the proxy's own (which
    # the API trusts to forward: only nginx's overwriting the header protects it).
    for address in ("127.0.0.2", "127.0.0.1"):
        graphql = limited_front.client(address)
        assert await _register_outcomes(graphql, attempts) == expected, address
        await graphql.close()
    # Straight to the API from a peer that is not the proxy: its header is ignored.
    direct = limited_front.client("127.0.0.3", direct=True)
    assert await _register_outcomes(direct, attempts) == expected
    await direct.close()
    # The limit is per client address, not global: a new client still gets its budget.
    fresh = limited_front.client("127.0.0.4")
    assert "errors" not in await fresh.try_register()
    await fresh.close()


async def _until_refused(
    send: Callable[[], Awaitable[bool]], burst: int, rate: float
) -> tuple[int, float]:
    """Sends waves of ``burst + 1`` concurrent requests until nginx refuses one (429).
    Returns (accepted, seconds). ``send`` says True when accepted, False on a 429."""
    accepted = 0
    started = time.monotonic()
    while time.monotonic() - started < LOAD_FACTOR * MARGIN_SECONDS:
        answers = await asyncio.gather(*(send() for _ in range(burst + 1)))
        accepted += sum(answers)
        if not all(answers):
            return accepted, time.monotonic() - started
    raise AssertionError(f"nginx accepted {accepted} requests and refused none")


async def test_nginx_limits_get_queries_and_websocket_handshakes(limited_front: Front) -> None:
    """Not only POSTs: GET queries and WebSocket handshakes have per-address budgets
    (deploy/nginx/nginx.conf: 20/s with a burst of 40, and 2/s with a burst of 10)."""
    tls = limited_front.ssl_context()
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.5", verify=tls)
    async with httpx.AsyncClient(transport=transport, verify=tls, timeout=60) as http:

        async def get_query() -> bool:
            response = await http.get(
                f"https://{limited_front.front}/graphql", params={"query": "{ __typename }"}
            )
            assert response.status_code in {200, 429}, response.text
            if response.status_code == 200:
                assert response.json()["data"] == {"__typename": "Query"}
            return response.status_code == 200

        accepted, seconds = await _until_refused(get_query, burst=40, rate=20)
    # However slowly they were sent, no more than the burst plus what the rate refilled.
    assert accepted <= 40 + 1 + 20 * seconds

    async def handshake() -> bool:
        try:
            async with websockets.connect(
                f"wss://{limited_front.front}/graphql",
                subprotocols=["graphql-transport-ws"],
                ssl=tls,
                local_addr=("127.0.0.6", 0),
                open_timeout=MARGIN_SECONDS,
            ):
                return True
        except websockets.InvalidStatus as error:
            assert error.response.status_code == 429
            return False

    accepted, seconds = await _until_refused(handshake, burst=10, rate=2)
    assert accepted <= 10 + 1 + 2 * seconds
    # Another address is not affected.
    async with ws_session(limited_front.front, None, scheme="wss", ssl=tls):
        pass
