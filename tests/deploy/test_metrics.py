"""observability/metrics.py: the ASGI middleware, the GraphQL extension, the endpoint, and the
multi-process exposition."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import strawberry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from crunchql.core.errors import BadUserInputError
from crunchql.core.lifecycle import RunOutcome
from crunchql.observability import metrics
from crunchql.schema.extensions import ContractErrors
from tests.deploy.conftest import ROOT


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def item(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["id"]})


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())
    await websocket.close()


def tiny_app() -> Starlette:
    app = Starlette(
        routes=[
            Route("/items/{id}", item),
            WebSocketRoute("/ws", echo),
            Route("/metrics", metrics.metrics_endpoint),
        ],
        middleware=[Middleware(metrics.MetricsMiddleware)],
    )
    return app


async def test_middleware_counts_by_route_template() -> None:
    ok = {"method": "GET", "route": "/items/{id}", "status": "200"}
    missing = {"method": "GET", "route": metrics.UNMATCHED_ROUTE, "status": "404"}
    before_ok = value("crunchql_http_requests_total", **ok)
    before_missing = value("crunchql_http_requests_total", **missing)
    before_count = value(
        "crunchql_http_request_duration_seconds_count", method="GET", route="/items/{id}"
    )
    transport = httpx.ASGITransport(app=tiny_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/items/1")).status_code == 200
        assert (await client.get("/items/2")).status_code == 200
        assert (await client.get("/no/such/path/123")).status_code == 404
    assert value("crunchql_http_requests_total", **ok) == before_ok + 2
    assert value("crunchql_http_requests_total", **missing) == before_missing + 1
    assert (
        value("crunchql_http_request_duration_seconds_count", method="GET", route="/items/{id}")
        == before_count + 2
    )
    # Raw paths never become labels.
    exposition = metrics.render().decode()
    assert "/items/1" not in exposition and "/no/such/path" not in exposition


async def test_middleware_tracks_open_websockets() -> None:
    before = value("crunchql_websocket_connections")
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "websocket.connect"})
    sent: list[dict[str, Any]] = []
    open_while_connected: list[float] = []

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "websocket.accept":
            open_while_connected.append(value("crunchql_websocket_connections"))
            await inbox.put({"type": "websocket.receive", "text": "hi"})

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "server": ("test", 80),
        "client": ("203.0.113.7", 4242),
        "subprotocols": [],
    }
    await tiny_app()(scope, receive, send)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert open_while_connected == [before + 1]
    assert value("crunchql_websocket_connections") == before


@strawberry.type
class Query:
    @strawberry.field
    def hello(self) -> str:
        return "hi"

    @strawberry.field
    def refused(self) -> str:
        raise BadUserInputError("no")


def tiny_schema() -> strawberry.Schema:
    # GraphQLMetrics first: it must see the codes ContractErrors sets.
    return strawberry.Schema(query=Query, extensions=[metrics.GraphQLMetrics, ContractErrors])


async def test_graphql_operations_by_name_and_outcome() -> None:
    schema = tiny_schema()

    def count(operation: str, outcome: str) -> float:
        return value(
            "crunchql_graphql_operations_total", operation=operation, type="query", outcome=outcome
        )

    before = {
        "ok": count("Hello", "ok"),
        "bad": count("Refused", "BAD_USER_INPUT"),
        "invalid": count("Invalid", "BAD_USER_INPUT"),
        "anonymous": count("anonymous", "ok"),
    }
    assert (await schema.execute("query Hello { hello }")).errors is None
    assert (await schema.execute("query Refused { refused }")).errors
    assert (await schema.execute("query Invalid { nope }")).errors
    assert (await schema.execute("{ hello }")).errors is None
    assert count("Hello", "ok") == before["ok"] + 1
    assert count("Refused", "BAD_USER_INPUT") == before["bad"] + 1
    assert count("Invalid", "BAD_USER_INPUT") == before["invalid"] + 1
    assert count("anonymous", "ok") == before["anonymous"] + 1
    assert (
        value("crunchql_graphql_operation_duration_seconds_count", operation="Hello", type="query")
        >= 1
    )


def test_operation_names_are_bounded() -> None:
    assert metrics.operation_label(None) == "anonymous"
    assert metrics.operation_label("not a name!") == "other"
    for index in range(metrics.MAX_OPERATION_NAMES + 5):
        metrics.operation_label(f"Generated{index}")
    assert metrics.operation_label("OneMoreNewName") == "other"
    assert metrics.operation_label("Generated0") == "Generated0"


def test_plain_functions() -> None:
    before = value("crunchql_calculations_submitted_total", kind="monteCarloPi")
    metrics.record_submitted("monteCarloPi")
    assert value("crunchql_calculations_submitted_total", kind="monteCarloPi") == before + 1
    # Every kind of the catalog keeps its own label (none is folded into "other").
    from crunchql.compute.catalog import KINDS

    for kind in KINDS:
        metrics.record_submitted(kind)
        assert value("crunchql_calculations_submitted_total", kind=kind) >= 1
    metrics.record_submitted("'; DROP")  # not a kind name: one shared label
    assert value("crunchql_calculations_submitted_total", kind="other") >= 1

    done = {"kind": "prime_count", "status": "succeeded"}
    before = value("crunchql_calculations_finished_total", **done)
    metrics.record_finished("prime_count", RunOutcome.SUCCEEDED, 2.5)
    metrics.record_finished("prime_count", RunOutcome.SKIPPED, 0.0)  # not a run
    assert value("crunchql_calculations_finished_total", **done) == before + 1
    assert value("crunchql_calculation_run_seconds_count", kind="prime_count") >= 1

    active = value("crunchql_subscriptions_active")
    with metrics.tracking_subscription():
        assert value("crunchql_subscriptions_active") == active + 1
    metrics.subscription_started()
    metrics.subscription_ended()
    assert value("crunchql_subscriptions_active") == active


class FakePipeline:
    def __init__(self) -> None:
        self.keys: list[str] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *_: Any) -> None:
        return None

    def llen(self, key: str) -> None:
        self.keys.append(key)

    async def execute(self) -> list[int]:
        return [7 if key == "crunchql:calculations" else 1 for key in self.keys]


class FakeRedis:
    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline()


async def test_metrics_endpoint_refreshes_and_survives_failures() -> None:
    app = tiny_app()

    def broken_session_factory() -> Any:
        raise ConnectionRefusedError("database down")

    app.state.runtime = SimpleNamespace(
        redis=FakeRedis(),
        settings=SimpleNamespace(worker_stale_seconds=30.0),
        services=SimpleNamespace(session_factory=broken_session_factory),
    )
    before = value("crunchql_metrics_refresh_errors_total", source="database")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert value("crunchql_queue_depth", queue="calculations") == 7
    assert value("crunchql_queue_depth", queue="calculations.DQ") == 1
    assert value("crunchql_metrics_refresh_errors_total", source="database") == before + 1
    assert "crunchql_queue_depth" in response.text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_python(code: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_multiprocess_exposition(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    child = """
        from crunchql.observability import metrics
        metrics.record_submitted("mandelbrot")
        metrics.subscription_started()  # exits without ending: must not count after exit
    """
    parent = f"""
        import subprocess, sys, urllib.request
        from crunchql.observability import metrics
        metrics.record_submitted("mandelbrot")
        metrics.WEBSOCKETS_OPEN.inc()
        import textwrap
        subprocess.run([sys.executable, "-c", textwrap.dedent({child!r})], check=True)
        text = metrics.render().decode()
        port = {free_port()}
        assert metrics.start_worker_metrics_server(port, addr="127.0.0.1") is True
        # A second process (here: a second call) finds the port taken and stands down.
        assert metrics.start_worker_metrics_server(port, addr="127.0.0.1") is False
        served = urllib.request.urlopen(f"http://127.0.0.1:{{port}}/metrics").read().decode()
        print(text)
        print("=== served ===")
        print(served)
    """
    output = run_python(parent, env)
    rendered, served = output.split("=== served ===")
    assert 'crunchql_calculations_submitted_total{kind="mandelbrot"} 2.0' in rendered
    assert "crunchql_websocket_connections 1.0" in rendered
    assert "crunchql_subscriptions_active 0.0" in rendered
    assert 'crunchql_calculations_submitted_total{kind="mandelbrot"} 2.0' in served
    assert "process_cpu_seconds_total" not in rendered  # per-process collectors are off
