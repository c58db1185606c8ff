"""All configuration, read once from the environment (and an optional ``.env``)."""

from __future__ import annotations

import secrets
import warnings
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./var/crunchql.sqlite3"
MIN_SECRET_LENGTH = 32
PLACEHOLDER_SECRETS = frozenset({"change-me", "changeme", "secret", "dev", "development"})


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class SettingsError(ValueError):
    """Configuration that must not start the service; the message says what to fix."""


def normalise_database_url(url: str) -> str:
    """Accept the URLs platforms hand out and pick the async driver for each."""
    for prefix in (
        "postgres://",
        "postgresql://",
        "postgresql+psycopg2://",
        "postgresql+psycopg://",
    ):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CRUNCHQL_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    environment: Environment = Environment.DEVELOPMENT
    database_url: str = Field(
        default=DEFAULT_SQLITE_URL, validation_alias=AliasChoices("DATABASE_URL")
    )
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL"))
    # Connections each process opens as needed and keeps; beyond them, a statement waits
    # for one to come back. The overflow: connections a burst may open beyond the pool,
    # closed again as they come back (each costs a connection set-up, and its prepared
    # statements are lost: under a steady load above the pool's size, the churn took a
    # tenth of the API's CPU).
    database_pool_size: int = Field(default=20, ge=1, le=200)
    database_pool_overflow: int = Field(default=0, ge=0, le=200)
    # A pooled connection unused for longer than this is pinged (one round trip) before
    # reuse; one the server closed is replaced at checkout without a ping (db.engine).
    database_ping_after_idle_seconds: float = Field(default=30.0, ge=0)

    jwt_secret: str = Field(default="", repr=False)
    jwt_algorithm: str = "HS256"
    jwt_issuer: str = "crunchql"
    jwt_audience: str = "crunchql-api"
    access_token_minutes: int = Field(default=15, ge=1, le=24 * 60)
    refresh_token_days: int = Field(default=30, ge=1, le=365)
    bcrypt_rounds: int = Field(default=12, ge=4, le=16)

    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_ws_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    introspection: bool | None = None  # None: on in development, off in production
    max_query_depth: int = Field(default=15, ge=1)
    max_aliases: int = Field(default=50, ge=1)
    max_tokens: int = Field(default=450, ge=100)
    max_request_bytes: int = Field(default=256 * 1024, ge=1024)
    max_query_cost: int = Field(default=5000, ge=10)
    max_response_bytes: int = Field(default=32 * 1024 * 1024, ge=64 * 1024)
    graphiql: bool | None = None  # None: on in development, off in production
    hsts_seconds: int = Field(default=0, ge=0)  # 0: no Strict-Transport-Security header
    # Subscribers of one calculation with one selection set share one execution per
    # event (schema.sharing); off only to measure what it saves.
    subscription_sharing: bool = True
    # With sharing, graphql-transport-ws subscribers of calculationUpdates also share
    # one serialised payload per event, written to their sockets without Strawberry's
    # per-result work (schema.sharing.DirectSink); off only to measure what it saves.
    subscription_direct_frames: bool = True
    # With direct frames, every graphql-transport-ws message (those frames, the snapshots,
    # the completes) written below ASGI, one socket write per event loop turn for all of
    # a socket's messages (app/websocket_frames.py; under Uvicorn only); off only to
    # measure what it saves.
    ws_batched_writes: bool = True

    rate_limits: bool = True
    # Failed logins for one account from one client address per window; past it that
    # address is locked out of that account, longer each time (window, 2x, 4x, ... 24 h).
    login_attempts_per_account: int = Field(default=10, ge=1)
    login_failures_per_address: int = Field(default=50, ge=1)  # across accounts, per window
    login_failures_per_account: int = Field(default=100, ge=1)  # from anywhere, per hour
    login_attempts_per_address: int = Field(default=300, ge=1)  # any outcome, per window
    register_attempts_per_address: int = Field(default=100, ge=1)
    rate_limit_window_seconds: int = Field(default=300, ge=1)
    # Not a rate limit: applies whatever CRUNCHQL_RATE_LIMITS says.
    # Per-user caps (0: none, for a deployment whose users all trust each other; each
    # costs statements on the hot paths: the submit's lock and count, the claim's).
    max_active_calculations: int = Field(default=20, ge=0)
    max_running_per_user: int = Field(default=2, ge=0)
    user_cache_seconds: float = Field(default=5.0, gt=0, le=300)
    # Revocations reach every API process at once over the event bus; this bounds how
    # long a lost event could go unnoticed (sessions re-read from the database).
    session_recheck_seconds: float = Field(default=4.0, gt=0, le=300)
    audit_retention_days: int = Field(default=365, ge=1)

    ws_connection_init_timeout_seconds: float = Field(default=10.0, gt=0)
    subscription_max_seconds: float = Field(default=6 * 3600.0, gt=0)
    ws_max_message_bytes: int = Field(default=256 * 1024, ge=1024)
    # permessage-deflate: off, because frames here are small JSON (a status, a progress
    # tick) that zlib barely shrinks, while it costs CPU per frame per socket and a
    # compressor's memory per socket (docs/benchmarks.md, "Speed at scale").
    ws_compression: bool = False
    ws_max_sockets_per_user: int = Field(default=10, ge=1)
    ws_max_subscriptions_per_user: int = Field(default=200, ge=1)
    ws_operations_per_minute: int = Field(default=300, ge=1)  # per socket

    worker_heartbeat_seconds: float = Field(default=5.0, gt=0)
    worker_stale_seconds: float = Field(default=30.0, gt=0)
    warm_up_kernels: bool = True  # embedded mode: compile kernels at start
    progress_publish_interval: float = Field(default=0.1, gt=0)
    progress_write_interval: float = Field(default=1.0, gt=0)
    job_max_retries: int = Field(default=3, ge=0)
    # A calculation estimated to cost more than this many seconds of one core is split
    # into shards that run on any workers (0: never split).
    shard_seconds: float = Field(default=2.0, ge=0)
    # A calculation estimated at no more than this many seconds of one core is computed
    # without a claim and stored QUEUED → SUCCEEDED in one statement (workers.runner's
    # quick_run): no RUNNING state, no running slot; 0: every run is claimed first.
    quick_run_seconds: float = Field(default=0.01, ge=0)
    # GPU routing (docs/operations.md, "GPU workers"): a calculation (or one shard) of a
    # kind with a GPU kernel goes to the calculations.gpu queue while a GPU worker is
    # alive and its estimated cost, in the shard estimate's unit (seconds of one CPU
    # core), is at least this; below zero: never. 1 s: a smaller job takes under half a
    # second on a 2-core CPU worker, so a GPU (one for many users) would save it little
    # beside its own per-job costs (a queue of its own, kernel launches, copies).
    gpu_min_cost: float = 1.0
    # How long each process trusts its view of "a GPU worker is alive" (no query per submit).
    gpu_alive_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    # What `crunchql worker` runs kernels on (`--device` sets it): "cpu" takes the
    # calculations queue, "gpu" only calculations.gpu.
    worker_device: Literal["cpu", "gpu"] = "cpu"

    # Schedules (docs/operations.md, "Schedules").
    max_active_schedules: int = Field(default=20, ge=1)
    # Every `crunchql worker` process (and `crunchql serve` in embedded mode) contends
    # for scheduler leadership; off: only `crunchql scheduler` processes fire schedules.
    run_scheduler: bool = True
    scheduler_misfire_grace_seconds: float = Field(default=30.0, gt=0, le=3600)
    scheduler_batch_size: int = Field(default=100, ge=1, le=1000)
    scheduler_lanes: int = Field(default=4, ge=1, le=16)
    scheduler_max_sleep_seconds: float = Field(default=60.0, gt=0)
    scheduler_follower_retry_seconds: float = Field(default=2.0, gt=0, le=10)
    scheduler_metrics_port: int = Field(default=9101, ge=1, le=65535)
    # Tests only (refused in production): a sixth, leading seconds field in cron
    # expressions, so end-to-end tests need not wait for whole minutes.
    scheduler_seconds_field: bool = False

    log_level: str = "INFO"
    log_json: bool | None = None  # None: JSON in production, console in development
    sentry_dsn: str | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("SENTRY_DSN")
    )
    metrics: bool = True
    worker_metrics_port: int = Field(default=9100, ge=1, le=65535)

    @field_validator("cors_origins", "allowed_ws_origins", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in {"on", "off"}:
            return value.strip().lower() == "on"
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalise_database_url(value)

    @model_validator(mode="after")
    def _check_environment(self) -> Settings:
        if self.environment is Environment.PRODUCTION:
            if not self.jwt_secret or len(self.jwt_secret) < MIN_SECRET_LENGTH:
                raise SettingsError(
                    f"CRUNCHQL_JWT_SECRET must be set to at least {MIN_SECRET_LENGTH} random "
                    "characters in production (e.g. `python -c 'import secrets; "
                    "print(secrets.token_urlsafe(48))'`)."
                )
            if self.jwt_secret.lower() in PLACEHOLDER_SECRETS:
                raise SettingsError("CRUNCHQL_JWT_SECRET is a placeholder; set a random secret.")
            if self.is_sqlite:
                raise SettingsError(
                    "DATABASE_URL points at SQLite; production needs PostgreSQL "
                    "(postgresql://user:password@host:5432/dbname)."
                )
            if self.scheduler_seconds_field:
                raise SettingsError(
                    "CRUNCHQL_SCHEDULER_SECONDS_FIELD is for tests; production cron "
                    "expressions have five fields."
                )
            if not self.rate_limits:
                warnings.warn(
                    "CRUNCHQL_RATE_LIMITS=off in production: login and register are not "
                    "rate limited.",
                    stacklevel=2,
                )
        elif not self.jwt_secret:
            # A per-process secret: tokens do not survive a restart and are not shared
            # between processes, which is what a first run on a laptop wants.
            object.__setattr__(self, "jwt_secret", secrets.token_urlsafe(48))
            object.__setattr__(self, "generated_secret", True)
        return self

    generated_secret: bool = Field(default=False, exclude=True)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def effective_cors_origins(self) -> list[str]:
        """The configured origins; in development with none configured, any origin (a
        frontend's dev server on another port just works; tokens travel in a header, not
        a cookie, so no ambient credential is exposed). Production allows only what is
        configured."""
        if self.cors_origins or self.is_production:
            return self.cors_origins
        return ["*"]

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.PRODUCTION

    @property
    def introspection_enabled(self) -> bool:
        return self.introspection if self.introspection is not None else not self.is_production

    @property
    def graphiql_enabled(self) -> bool:
        return self.graphiql if self.graphiql is not None else not self.is_production

    @property
    def json_logs(self) -> bool:
        return self.log_json if self.log_json is not None else self.is_production


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests build their own ``Settings`` instead."""
    return Settings()
