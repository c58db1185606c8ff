"""Prometheus metrics for the API and the workers.

Multi-process safe: when ``PROMETHEUS_MULTIPROC_DIR`` is set (Uvicorn ``--workers N``,
Dramatiq ``--processes N``) every process writes its values to files in that directory
and the exposition merges them with ``MultiProcessCollector``. The directory must be
empty when the server starts (deploy/entrypoint.sh wipes it) and writable by the
process. ``prometheus_client`` reads the variable at import time: set it in the
environment, not from Python.

Label values are bounded on purpose: routes are path templates, operation names are
checked and capped, calculation kinds are checked, so a client cannot create series.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import SchemaExtension

from crunchql.core.lifecycle import RunOutcome

logger = logging.getLogger("crunchql.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
QUEUE_KEY_PREFIX = "crunchql:"  # Dramatiq's Redis namespace (workers/broker.py)
QUEUES = ("calculations", "calculations.DQ")  # the queue and its retry (delay) queue
REFRESH_TIMEOUT_SECONDS = 2.0
DEFAULT_WORKER_STALE_SECONDS = 30.0

UNMATCHED_ROUTE = "<unmatched>"
ANONYMOUS_OPERATION = "anonymous"
OTHER = "other"
MAX_OPERATION_NAMES = 200
OPERATION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
KIND_NAME = re.compile(r"^[a-z][A-Za-z0-9_]{0,39}$")  # the catalog's camelCase names
ERROR_CODE = re.compile(r"^[A-Z][A-Z0-9_]{0,39}$")
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

# Seconds. HTTP/GraphQL answers are mostly milliseconds; jobs run up to hours.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RUN_TIME_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


# The metrics live in their own registry (never prometheus_client's global one), so
# importing this module twice in tests or next to a library that registers its own
# names cannot collide.
REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "crunchql_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "crunchql_http_request_duration_seconds",
    "Time from receiving an HTTP request to the end of its response.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
GRAPHQL_OPERATIONS = Counter(
    "crunchql_graphql_operations",
    "GraphQL operations by operation name, type and outcome (ok or the first error code).",
    ["operation", "type", "outcome"],
    registry=REGISTRY,
)
GRAPHQL_DURATION = Histogram(
    "crunchql_graphql_operation_duration_seconds",
    "GraphQL operation time: parse, validate, execute (a subscription's whole life).",
    ["operation", "type"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
WEBSOCKETS_OPEN = Gauge(
    "crunchql_websocket_connections",
    "WebSocket connections open now (accepted and not yet closed).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
SUBSCRIPTIONS_ACTIVE = Gauge(
    "crunchql_subscriptions_active",
    "GraphQL subscriptions streaming now.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
CALCULATIONS_SUBMITTED = Counter(
    "crunchql_calculations_submitted",
    "Calculations accepted by submitCalculation, by kind.",
    ["kind"],
    registry=REGISTRY,
)
CALCULATIONS_FINISHED = Counter(
    "crunchql_calculations_finished",
    "Calculation runs that ended, by kind and status (succeeded, failed, cancelled).",
    ["kind", "status"],
    registry=REGISTRY,
)
JOB_RUN_TIME = Histogram(
    "crunchql_calculation_run_seconds",
    "Wall time of one calculation run on a worker, by kind.",
    ["kind"],
    buckets=RUN_TIME_BUCKETS,
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "crunchql_queue_depth",
    "Messages waiting in a Dramatiq queue (refreshed from Redis on each scrape).",
    ["queue"],
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)
WORKERS_ALIVE = Gauge(
    "crunchql_workers_alive",
    "Worker processes whose heartbeat is fresh (refreshed from the database on each scrape "
    "and each /readyz). Zero does not make the API unready: alert on it instead.",
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)
# Seconds from a fire instant to its calculation's row (target p99 <= 1 s).
FIRE_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

SCHEDULE_FIRES = Counter(
    "crunchql_schedule_fires",
    "Schedule fires acted on, by outcome: created (a calculation), skipped_limit (the "
    "owner was at the active-calculation limit), skipped_disabled (the owner is disabled).",
    ["outcome"],
    registry=REGISTRY,
)
SCHEDULE_MISFIRES = Counter(
    "crunchql_schedule_misfires",
    "Fire instants no scheduler acted on in time, by the schedule's misfire policy "
    "(SKIP drops them; RUN_ONCE folds those of the last 24 hours into one calculation).",
    ["policy"],
    registry=REGISTRY,
)
SCHEDULE_FIRE_LAG = Histogram(
    "crunchql_schedule_fire_lag_seconds",
    "Calculation created minus fire instant, for fires acted on in time.",
    buckets=FIRE_LAG_BUCKETS,
    registry=REGISTRY,
)
SCHEDULER_LEADER = Gauge(
    "crunchql_scheduler_leader",
    "1 while this process is the scheduler leader (summed: how many leaders; should be 1).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)

REFRESH_ERRORS = Counter(
    "crunchql_metrics_refresh_errors",
    "Failed scrape-time refreshes of queue depth or live workers, by source.",
    ["source"],
    registry=REGISTRY,
)

if multiprocess_dir() is None:
    # Single process: the usual process, platform and GC metrics come along. (In
    # multi-process mode they would describe only the process that answers the scrape.)
    ProcessCollector(registry=REGISTRY)
    PlatformCollector(registry=REGISTRY)
    GCCollector(registry=REGISTRY)
else:

    def _mark_dead() -> None:
        # Drops this process's live* gauge files so open websockets and subscriptions
        # of a process that exited stop counting. A SIGKILLed process leaves its files:
        # the entrypoint wipes the directory when the container starts.
        with contextlib.suppress(Exception):
            prometheus_multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    atexit.register(_mark_dead)


def exposition_registry() -> CollectorRegistry:
    """The registry to expose: all processes' files in multi-process mode, else ours."""
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    registry = CollectorRegistry()
    prometheus_multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry


def render() -> bytes:
    return generate_latest(exposition_registry())


# --- label hygiene -----------------------------------------------------------------

_operation_names: set[str] = set()
_operation_names_lock = threading.Lock()


def operation_label(name: str | None) -> str:
    """The operation name as a label: anonymous, a known name, or ``other`` once the
    per-process cap is reached or the name does not look like a GraphQL name."""
    if not name:
        return ANONYMOUS_OPERATION
    if not OPERATION_NAME.match(name):
        return OTHER
    with _operation_names_lock:
        if name in _operation_names:
            return name
        if len(_operation_names) >= MAX_OPERATION_NAMES:
            return OTHER
        _operation_names.add(name)
    return name


def _checked(value: str, pattern: re.Pattern[str]) -> str:
    return value if pattern.match(value) else OTHER


# --- plain functions for services, resolvers and workers ---------------------------


def record_submitted(kind: str) -> None:
    CALCULATIONS_SUBMITTED.labels(kind=_checked(kind, KIND_NAME)).inc()


def record_finished(kind: str, outcome: RunOutcome, seconds: float) -> None:
    """One run ended (``workers.runner.run_with_policy`` calls this once per run). A
    delivery that ran nothing (SKIPPED) or will be retried (RETRY) is not counted."""
    if not outcome.is_run:
        return
    kind_label = _checked(kind, KIND_NAME)
    CALCULATIONS_FINISHED.labels(kind=kind_label, status=outcome.value).inc()
    JOB_RUN_TIME.labels(kind=kind_label).observe(max(seconds, 0.0))


def record_workers_alive(alive: int) -> None:
    """Worker presence as counted by /readyz or a scrape (never a readiness failure)."""
    WORKERS_ALIVE.set(alive)


def subscription_started() -> None:
    SUBSCRIPTIONS_ACTIVE.inc()


def subscription_ended() -> None:
    SUBSCRIPTIONS_ACTIVE.dec()


@contextlib.contextmanager
def tracking_subscription() -> Iterator[None]:
    """``with tracking_subscription(): async for ...``: started/ended, even on errors."""
    subscription_started()
    try:
        yield
    finally:
        subscription_ended()


def record_fires(outcomes: dict[str, int], misfires: dict[str, int], lags: list[float]) -> None:
    """One scheduler pass: fires by outcome, missed instants by policy, on-time lags."""
    for outcome, count in outcomes.items():
        SCHEDULE_FIRES.labels(outcome=outcome.lower()).inc(count)
    for policy, count in misfires.items():
        SCHEDULE_MISFIRES.labels(policy=policy).inc(count)
    for lag in lags:
        SCHEDULE_FIRE_LAG.observe(max(lag, 0.0))


def set_leader(leading: bool) -> None:
    SCHEDULER_LEADER.set(1 if leading else 0)


# --- scrape-time refreshes ----------------------------------------------------------


async def refresh_queue_depth(redis: Any) -> None:
    """Sets ``crunchql_queue_depth`` from the lengths of Dramatiq's Redis lists
    (``crunchql:<queue>``; messages a worker has prefetched are no longer in them)."""
    async with redis.pipeline(transaction=False) as pipe:
        for queue in QUEUES:
            pipe.llen(QUEUE_KEY_PREFIX + queue)
        lengths = await pipe.execute()
    for queue, length in zip(QUEUES, lengths, strict=True):
        QUEUE_DEPTH.labels(queue=queue).set(int(length))


async def refresh_workers_alive(session_factory: Any, stale_seconds: float) -> None:
    from crunchql.db.engine import unit_of_work
    from crunchql.db.repositories import WorkerRepository

    async with unit_of_work(session_factory) as session:
        alive = await WorkerRepository(session).count_alive(
            datetime.now(UTC), timedelta(seconds=stale_seconds)
        )
    record_workers_alive(alive)


async def _refresh(source: str, refresh: Any) -> None:
    try:
        await asyncio.wait_for(refresh, REFRESH_TIMEOUT_SECONDS)
    except Exception as error:
        # The last value stays; the error counter (and the log) say it is stale.
        REFRESH_ERRORS.labels(source=source).inc()
        logger.warning("metrics refresh of %s failed: %s", source, type(error).__name__)


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics. Refreshes the Redis and database gauges (Redis mode only: the
    embedded mode has no queue and no separate workers), then exposes everything."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None and runtime.redis is not None:
        settings = getattr(runtime, "settings", None)
        stale = getattr(settings, "worker_stale_seconds", DEFAULT_WORKER_STALE_SECONDS)
        await asyncio.gather(
            _refresh("redis", refresh_queue_depth(runtime.redis)),
            _refresh("database", refresh_workers_alive(runtime.services.session_factory, stale)),
        )
    # Reading every process's files is file I/O: keep it off the event loop.
    body = await asyncio.to_thread(render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


# --- ASGI middleware ----------------------------------------------------------------


def route_template(scope: Scope) -> str:
    """The path template of the route that will answer (``/graphql``), never the raw
    path, so unknown URLs share one label."""
    app = scope.get("app")
    for route in getattr(app, "routes", None) or ():
        match, _child = route.matches(scope)
        if match is Match.FULL:
            path = str(getattr(route, "path_format", getattr(route, "path", "")))
            return f"{path}/{{path}}" if isinstance(route, Mount) else path or "/"
    return UNMATCHED_ROUTE


@functools.lru_cache(maxsize=4096)  # label values here are bounded sets (routes, names)
def labelled(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once: on every request, prometheus_client's
    own look-up (argument checks, a lock) is a measurable share of a small query."""
    return metric.labels(*values)


class MetricsMiddleware:
    """Counts HTTP requests (method, route template, status) with their latency, and
    tracks open WebSocket connections. Pure ASGI: streaming and WebSockets pass through
    untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method = scope.get("method", "GET").upper()
        method = method if method in HTTP_METHODS else "OTHER"
        route = route_template(scope)
        status = 500  # an exception before the response starts is a 500 to the client

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            labelled(HTTP_REQUESTS, method, route, str(status)).inc()
            labelled(HTTP_DURATION, method, route).observe(time.perf_counter() - started)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        accepted = False

        async def send_wrapper(message: Message) -> None:
            nonlocal accepted
            if message["type"] == "websocket.accept" and not accepted:
                accepted = True  # counted from here; the finally below un-counts it
                WEBSOCKETS_OPEN.inc()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if accepted:
                WEBSOCKETS_OPEN.dec()


# --- GraphQL -----------------------------------------------------------------------


class GraphQLMetrics(SchemaExtension):
    """Counts operations by name, type and outcome, with their latency.

    Put it FIRST in the schema's extensions: extensions unwind in reverse order, and
    the outcome must be read after ContractErrors has set ``extensions.code``.
    """

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        failed = True
        try:
            yield
            failed = False
        finally:
            context = self.execution_context
            outcome = "INTERNAL_SERVER_ERROR" if failed else self._outcome()
            try:
                operation_type = context.operation_type.value
            except Exception:
                operation_type = "unknown"  # no parsable document
            name = operation_label(context.operation_name)
            labelled(GRAPHQL_OPERATIONS, name, operation_type, outcome).inc()
            labelled(GRAPHQL_DURATION, name, operation_type).observe(time.perf_counter() - started)

    def _outcome(self) -> str:
        context = self.execution_context
        errors = getattr(context.result, "errors", None) or context.pre_execution_errors
        if not errors:
            return "ok"
        code = (errors[0].extensions or {}).get("code")
        return _checked(str(code), ERROR_CODE) if code else "ERROR"


# --- workers ------------------------------------------------------------------------


def start_worker_metrics_server(port: int, addr: str = "0.0.0.0") -> bool:  # noqa: S104
    """Serves /metrics for a worker container on ``port``. With several worker
    processes sharing ``PROMETHEUS_MULTIPROC_DIR`` one of them serves everybody's
    values: the others find the port taken and return False."""
    try:
        start_http_server(port, addr=addr, registry=exposition_registry())
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        if multiprocess_dir() is None:
            logger.warning(
                "worker metrics port %d is taken and %s is not set: this process's "
                "metrics are not exposed",
                port,
                MULTIPROC_ENV,
            )
        return False
    logger.info("worker metrics on :%d/metrics", port)
    return True
