"""The production topology on this machine, without Docker: nginx (deploy/nginx/nginx.conf)
terminating TLS in front of two Uvicorn API processes and two `crunchql worker`
processes, on the real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import flush_redis, truncate
from tests.e2e.nginx import local_config, nginx_binary
from tests.e2e.processes import (
    HttpGraphQL,
    ServiceProcess,
    collect_updates,
    free_port,
    service_env,
    start_api,
    start_worker,
    wait_healthy,
    wait_ready,
    wait_until,
    ws_session,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


@dataclass
class Topology:
    database_url: str
    redis_url: str
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


@pytest.fixture(scope="module")
async def topology(
    postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Topology]:
    binary = nginx_binary()
    await truncate(postgres_url)
    await flush_redis(redis_url)
    workdir = tmp_path_factory.mktemp("topology")
    env = service_env(postgres_url, redis_url)
    apis = [start_api(env, workdir) for _ in range(2)]
    workers = [start_worker(env, workdir) for _ in range(2)]
    http_port, https_port = free_port(), free_port()
    conf = local_config(
        binary, workdir, upstreams=[base for _, base in apis],
        http_port=http_port, https_port=https_port, single_worker=True,
    )  # fmt: skip
    nginx = ServiceProcess(
        "nginx", [binary, "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"], env, workdir
    )
    result = Topology(
        postgres_url, redis_url, workdir, apis, workers, nginx, http_port, https_port,
        workdir / "certs" / "tls.crt",
    )  # fmt: skip
    try:
        for api, base in apis:
            await wait_healthy(base, api)
        for worker in workers:
            await wait_ready(apis[0][1], worker)
        yield result
    finally:
        for process in [nginx, *workers, *(api for api, _ in apis)]:
            process.stop()
        await flush_redis(redis_url)


async def test_http_redirects_to_https(topology: Topology) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{topology.http_port}/graphql")
    assert response.status_code == 301
    assert response.headers["location"].startswith("https://")


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
        response = await graphql.http.post(
            graphql.url,
            json={
                "query": "mutation($i: CalculationInput!) { submitCalculation(input: $i) { id } }",
                "variables": {"i": {"monteCarloPi": {"samples": 1_000_000_000, "seed": 8}}},
            },
            headers={"Authorization": f"Bearer {graphql.token}", "X-Request-ID": submit_id},
        )
        assert response.headers["strict-transport-security"].startswith("max-age=")
        calculation_id = response.json()["data"]["submitCalculation"]["id"]
        results = await asyncio.gather(
            collect_updates(first, calculation_id), collect_updates(second, calculation_id)
        )
    for events, errors in results:
        assert errors == [], topology.logs()
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
        subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], check=False)
        try:
            down = await wait_until(
                lambda: _status_is(http, url, 503), 30, "/readyz to say 503 without Redis"
            )
            assert down["checks"]["redis"]["ok"] is False
            assert down["checks"]["database"]["ok"] is True
        finally:
            subprocess.run(REDIS_START, check=True)
        up = await wait_until(lambda: _status_is(http, url, 200), 60, "/readyz back to 200")
        assert up["checks"]["redis"]["ok"] is True


async def _status_is(http: httpx.AsyncClient, url: str, code: int) -> dict[str, Any] | None:
    response = await http.get(url)
    return response.json() if response.status_code == code else None  # type: ignore[no-any-return]


async def test_stopping_a_worker_mid_job_loses_nothing(topology: Topology) -> None:
    graphql = topology.graphql()
    await graphql.register()
    submitted = await graphql.submit({"monteCarloPi": {"samples": 3_000_000_000, "seed": 6}})

    async def owner_pid() -> int | None:
        calc = await graphql.get(submitted["id"], "status progress")
        if calc["status"] != "RUNNING" or calc["progress"] <= 0.05:
            return None
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

    pid = await wait_until(owner_pid, 90, "the job to run on a worker")
    running_on = next(w for w in topology.workers if os.getpgid(pid) == w.process.pid)
    # A normal stop (deploy, scale down): SIGTERM to the worker's main process, which
    # passes it on to its worker processes, as `docker stop` or Kubernetes would.
    running_on.process.send_signal(signal.SIGTERM)
    async with ws_session(
        topology.front, graphql.token, scheme="wss", ssl=topology.ssl_context()
    ) as socket_:
        events, errors = await collect_updates(socket_, submitted["id"], timeout=180)
    assert errors == [], topology.logs()
    assert events[-1]["status"] == "SUCCEEDED", topology.logs()
    assert events[-1]["attempts"] == 2  # handed back, finished by the other worker
    running_on.process.wait(30)  # the stopped worker exited without waiting for the job
    await graphql.close()
