"""What the use cases need, built once by the wiring and handed to them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

from cachetools import TTLCache
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crunchql.auth.concurrency import SlotLimiter
from crunchql.auth.passwords import PasswordHasher
from crunchql.auth.rate_limit import RateLimiter
from crunchql.auth.tokens import TokenService
from crunchql.db.models import User
from crunchql.pubsub.bus import EventBus
from crunchql.services.revocation import SessionGuard


@dataclass(frozen=True)
class Work:
    """What a queue may route a calculation on (workers.routing): its kind, stored input,
    and for a shard message how many shards share the job."""

    kind: str
    input: Mapping[str, Any]
    shards: int = 1


class JobQueue(Protocol):
    async def enqueue(self, calculation_id: UUID, work: Work | None = None) -> None:
        """Hand a committed QUEUED calculation to whoever runs calculations; ``work``
        lets the queue route it without reading the row (None: the queue decides, by
        reading it only when it must)."""
        ...


class Infrastructure(Protocol):
    """What a calculation runner needs: sessions and the event bus."""

    @property
    def session_factory(self) -> async_sessionmaker[AsyncSession]: ...

    @property
    def bus(self) -> EventBus: ...


@dataclass
class RunnerServices:
    session_factory: async_sessionmaker[AsyncSession]
    bus: EventBus


@dataclass(frozen=True)
class Limits:
    rate_limits: bool = True
    login_attempts_per_account: int = 10  # failures per (account, address) per window
    login_failures_per_address: int = 50
    login_failures_per_account: int = 100  # per hour, from any address
    login_attempts_per_address: int = 300
    register_attempts_per_address: int = 100
    rate_limit_window_seconds: int = 300
    max_active_calculations: int = 20  # 0: no limit
    max_running_per_user: int = 2  # 0: no limit
    ws_max_sockets_per_user: int = 10
    ws_max_subscriptions_per_user: int = 200
    ws_operations_per_minute: int = 300
    subscription_max_seconds: float = 6 * 3600.0
    max_active_schedules: int = 20
    # Tests only: cron expressions with a sixth, leading seconds field.
    cron_seconds_field: bool = False


def new_user_cache(seconds: float = 5.0, size: int = 10_000) -> TTLCache[UUID, User]:
    """Users by id, for a few seconds: every authenticated request needs its caller,
    and a database round trip per request would cost more than all the rest of a
    small query. A disabled account is refused within ``seconds``."""
    return TTLCache(maxsize=size, ttl=seconds)


@dataclass
class ServiceContainer:
    """Everything the API's use cases need, built once per process by ``runtime``."""

    session_factory: async_sessionmaker[AsyncSession]
    hasher: PasswordHasher
    tokens: TokenService
    rate_limiter: RateLimiter
    bus: EventBus
    queue: JobQueue
    limits: Limits
    user_cache: TTLCache[UUID, User] = field(default_factory=new_user_cache)
    # Revoked and recently checked sessions, and the open subscriptions to end.
    session_guard: SessionGuard = field(default_factory=SessionGuard)
    # Open sockets and subscriptions per user (shared through Redis when configured).
    slots: SlotLimiter = field(default_factory=SlotLimiter)
