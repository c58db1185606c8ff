"""What the service tests share."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from crunchql.auth.passwords import PasswordHasher
from crunchql.auth.rate_limit import DisabledRateLimiter
from crunchql.auth.tokens import TokenService
from crunchql.db.engine import create_session_factory, unit_of_work
from crunchql.db.models import User
from crunchql.pubsub.bus import InProcessEventBus
from crunchql.services.container import Limits, ServiceContainer


class NoQueue:
    async def enqueue(self, calculation_id: uuid.UUID, work: object = None) -> None:
        return None


def make_services(engine: AsyncEngine, **parts: Any) -> ServiceContainer:
    """A container on ``engine``: cheap password hashing, no rate limits, the in-process
    bus and a queue that drops every job, unless ``parts`` (ServiceContainer's fields)
    say otherwise."""
    defaults: dict[str, Any] = {
        "session_factory": create_session_factory(engine),
        "hasher": PasswordHasher(rounds=4),
        "tokens": TokenService(secret="s" * 40),
        "rate_limiter": DisabledRateLimiter(),
        "bus": InProcessEventBus(),
        "queue": NoQueue(),
        "limits": Limits(rate_limits=False),
    }
    return ServiceContainer(**{**defaults, **parts})


async def make_user(services: ServiceContainer) -> User:
    async with unit_of_work(services.session_factory) as session:
        user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
        session.add(user)
        await session.flush()
    return user
