"""The Starlette application: the web console at /, GraphQL at /graphql, GraphiQL assets,
health, metrics."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from crunchql.app.console import ConsoleAssets, console_page
from crunchql.app.graphiql import ASSETS_DIR
from crunchql.app.graphql_view import CrunchGraphQL
from crunchql.app.health import healthz, readyz
from crunchql.app.security import SecurityHeadersMiddleware
from crunchql.app.websocket_frames import FrameWriterMiddleware
from crunchql.core.logging import configure_logging
from crunchql.core.settings import Settings, get_settings
from crunchql.observability.errors import init_error_reporting
from crunchql.observability.metrics import MetricsMiddleware, metrics_endpoint
from crunchql.runtime import start_runtime
from crunchql.schema.root import SchemaOptions, build_schema

logger = logging.getLogger("crunchql.app")


class GraphQLEndpoint:
    """Hands /graphql to the view built at start-up (it needs the live services)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope["app"].state.graphql(scope, receive, send)


graphql_endpoint = GraphQLEndpoint()


def create_app(settings: Settings | None = None, *, configure_logs: bool = True) -> Starlette:
    settings = settings or get_settings()
    if configure_logs:
        configure_logging(settings)
        init_error_reporting(settings, component="api")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = await start_runtime(settings)
        schema = build_schema(
            SchemaOptions(
                max_depth=settings.max_query_depth,
                max_aliases=settings.max_aliases,
                max_tokens=settings.max_tokens,
                introspection=settings.introspection_enabled,
                # Suggestions reveal the schema: only where introspection does too.
                field_suggestions=settings.introspection_enabled and not settings.is_production,
                metrics=settings.metrics,
                max_cost=settings.max_query_cost,
                share_subscription_results=settings.subscription_sharing,
            )
        )
        app.state.runtime = runtime
        app.state.graphql = CrunchGraphQL(
            schema,
            runtime.services,
            allowed_origins=settings.allowed_ws_origins or settings.effective_cors_origins,
            connection_init_timeout=settings.ws_connection_init_timeout_seconds,
            max_request_bytes=settings.max_request_bytes,
            max_response_bytes=settings.max_response_bytes,
            graphiql=settings.graphiql_enabled,
            direct_frames=settings.subscription_direct_frames,
        )
        logger.info(
            "crunchql ready (%s, %s, %s)",
            settings.environment.value,
            "PostgreSQL" if not settings.is_sqlite else "SQLite",
            "Redis" if settings.redis_url else "embedded queue and event bus",
        )
        try:
            yield
        finally:
            await runtime.close()

    middleware = []
    if settings.effective_cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.effective_cors_origins,
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type", "Accept", "X-Request-ID"],
                max_age=600,
            )
        )
    # Every response, errors and CORS preflights included, carries the headers.
    middleware.insert(0, Middleware(SecurityHeadersMiddleware, hsts_seconds=settings.hsts_seconds))
    if settings.metrics:
        middleware.insert(0, Middleware(MetricsMiddleware))  # outermost: sees every request
    if settings.subscription_direct_frames and settings.ws_batched_writes:
        # Before any other: it must see the server's own `send`.
        middleware.insert(0, Middleware(FrameWriterMiddleware))
    graphiql_assets = Mount(
        "/graphiql-assets", StaticFiles(directory=ASSETS_DIR), name="graphiql-assets"
    )
    return Starlette(
        routes=[
            Route("/graphql", graphql_endpoint),  # the view answers every method itself
            WebSocketRoute("/graphql", graphql_endpoint),
            *([graphiql_assets] if settings.graphiql_enabled else []),
            Route("/", console_page, methods=["GET", "HEAD"]),
            Mount("/console", ConsoleAssets(), name="console"),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            *([Route("/metrics", metrics_endpoint)] if settings.metrics else []),
        ],
        middleware=middleware,
        lifespan=lifespan,
    )
