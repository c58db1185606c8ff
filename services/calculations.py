"""Use cases around calculations: submit, read, list, cancel, watch."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

from crunchql.compute.base import ParameterError
from crunchql.compute.catalog import KINDS
from crunchql.core.errors import (
    BadUserInputError,
    ConflictError,
    NotFoundError,
    RateLimitedError,
)
from crunchql.core.lifecycle import CalculationEvent, CalculationSnapshot, WatchState
from crunchql.db.engine import after_commit, read_only, unit_of_work
from crunchql.db.models import AuditAction, Calculation, CalculationStatus, Role, User
from crunchql.db.repositories import CalculationPage, CalculationRepository
from crunchql.db.repositories.calculation import submit_new
from crunchql.pubsub.bus import RESYNC
from crunchql.services import audit
from crunchql.services.audit import ClientInfo
from crunchql.services.container import ServiceContainer, Work

logger = logging.getLogger(__name__)

MAX_PAGE_SIZE = 100
COUNT_LIMIT_RETRY_SECONDS = 5.0


def parse_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(raw))
    except (ValueError, TypeError):
        return None


def can_see(user: User, calculation: Calculation) -> bool:
    return calculation.owner_id == user.id or user.role is Role.ADMIN


async def submit(
    services: ServiceContainer, user: User, kind_name: str, raw_input: Mapping[str, Any]
) -> Calculation:
    kind = KINDS.get(kind_name)
    if kind is None:
        raise BadUserInputError(f"Unknown calculation kind {kind_name!r}.", field="input")
    try:
        params = kind.validate(raw_input)
    except ParameterError as error:
        raise BadUserInputError(error.message, field=f"{kind_name}.{error.field}") from None
    limit = services.limits.max_active_calculations
    # Not a rate limit: holds whatever CRUNCHQL_RATE_LIMITS says. The count and the
    # insert are one statement that commits by itself (``submit_new``): one round trip,
    # shared with the other submits of this turn on PostgreSQL.
    calculation = await submit_new(
        services.session_factory,
        owner_id=user.id,
        kind=kind.name,
        params=params,
        now=datetime.now(UTC),
        max_active=limit,
    )
    if calculation is None:
        async with read_only(services.session_factory) as session:
            active = await CalculationRepository(session).count_active(user.id)
        raise RateLimitedError(
            f"You have {active} calculations queued or running; the limit is {limit}. "
            "Wait for one to finish or cancel one.",
            # A count, not a window: when to try again is a suggestion.
            retry_after=COUNT_LIMIT_RETRY_SECONDS,
        )
    # Committed: the message may go out (never about a row that does not exist). The
    # job's message and the "created" event for the owner's list views go out together,
    # one round trip rather than two in a row. A send that fails is not the caller's
    # failure: the row stands, the workers' sweeper re-sends unclaimed calculations,
    # and list views re-read on a resync.
    results = await asyncio.gather(
        services.queue.enqueue(calculation.id, Work(kind.name, params)),
        services.bus.publish(CalculationEvent.status_change(calculation.to_snapshot())),
        return_exceptions=True,
    )
    for what, result in zip(("the job's message", "the created event"), results, strict=True):
        if isinstance(result, Exception):
            logger.warning("calculation %s: %s was not sent: %s", calculation.id, what, result)
        elif isinstance(result, BaseException):
            raise result
    return calculation


def check_kind(kind_name: str | None) -> None:
    """A kind filter must name a kind of the catalog."""
    if kind_name is not None and kind_name not in KINDS:
        raise BadUserInputError(f"Unknown calculation kind {kind_name[:64]!r}.", field="kind")


async def count_own(
    services: ServiceContainer,
    user: User,
    *,
    status: CalculationStatus | None,
    kind: str | None,
) -> int:
    check_kind(kind)
    async with read_only(services.session_factory) as session:
        return await CalculationRepository(session).count_for_owner(
            user.id, status=status, kind=kind
        )


async def resubmit(services: ServiceContainer, user: User, raw_id: str) -> Calculation:
    """A new calculation of the caller's with the stored input of a visible one: the seed
    is stored, so it reproduces the result. The same checks and limits as ``submit``."""
    original = await get_visible(services, user, raw_id)
    if original is None:
        raise NotFoundError("Calculation not found.")
    return await submit(services, user, original.kind, original.input)


async def get_visible(services: ServiceContainer, user: User, raw_id: str) -> Calculation | None:
    calculation_id = parse_id(raw_id)
    if calculation_id is None:
        return None
    async with read_only(services.session_factory) as session:
        calculation = await CalculationRepository(session).get(calculation_id)
    if calculation is None or not can_see(user, calculation):
        return None
    return calculation


def encode_cursor(calculation: Calculation) -> str:
    raw = f"{calculation.created_at.isoformat()}|{calculation.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created, _, raw_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        created_at = datetime.fromisoformat(created)
        if created_at.tzinfo is None:
            raise ValueError("cursor without offset")
        # In UTC here, so that a date near the ends of the calendar fails now and not
        # in the database driver (year 1 at +05:00 is before year 1 in UTC).
        return created_at.astimezone(UTC), uuid.UUID(raw_id)
    except (ValueError, binascii.Error, UnicodeError, OverflowError):
        raise BadUserInputError("Cursor is not valid.", field="after") from None


async def list_own(
    services: ServiceContainer,
    user: User,
    *,
    first: int,
    after: str | None,
    status: CalculationStatus | None,
) -> CalculationPage:
    if not 0 <= first <= MAX_PAGE_SIZE:
        raise BadUserInputError(
            f"first must be between 0 and {MAX_PAGE_SIZE} (got {first}).", field="first"
        )
    position = decode_cursor(after) if after else None
    async with read_only(services.session_factory) as session:
        return await CalculationRepository(session).list_for_owner(
            user.id, first=first, after=position, status=status
        )


async def cancel(
    services: ServiceContainer, user: User, raw_id: str, client: ClientInfo | None = None
) -> Calculation:
    calculation_id = parse_id(raw_id)
    not_found = NotFoundError("Calculation not found.")
    if calculation_id is None:
        raise not_found
    async with unit_of_work(services.session_factory) as session:
        repo = CalculationRepository(session)
        calculation = await repo.get(calculation_id)
        if calculation is None or not can_see(user, calculation):
            raise not_found
        cancelled = await repo.cancel(calculation_id, datetime.now(UTC))
        if cancelled is None:
            raise ConflictError(
                f"Calculation already finished ({calculation.status}); it cannot be cancelled."
            )
        if calculation.owner_id != user.id:
            # Only an ADMIN gets here (can_see): acting on someone else's work is audited.
            await audit.record(
                session, AuditAction.CALCULATION_CANCELLED_BY_ADMIN, client or ClientInfo(),
                actor_id=user.id, target_user_id=calculation.owner_id,
                calculationId=str(calculation_id),
            )  # fmt: skip

        async def announce() -> None:
            await services.bus.publish(CalculationEvent.status_change(cancelled.to_snapshot()))

        after_commit(session, announce)
    return cancelled


async def watch(
    services: ServiceContainer, user: User, raw_id: str
) -> AsyncIterator[CalculationSnapshot]:
    """The calculation as it stands, then each change, until it is terminal."""
    calculation_id = parse_id(raw_id)
    if calculation_id is None:
        raise NotFoundError("Calculation not found.")
    deadline = time.monotonic() + services.limits.subscription_max_seconds

    async def load() -> CalculationSnapshot:
        async with read_only(services.session_factory) as session:
            row = await CalculationRepository(session).read(calculation_id)
        if row is None or not can_see(user, row):
            raise NotFoundError("Calculation not found.")
        return row.to_snapshot()

    # Subscribe first, then read: an update between the two is queued, not lost.
    async with services.bus.subscribe(calculation_id) as subscription:
        state = WatchState(await load())
        yield state.current
        while not state.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # No periodic re-read: an idle subscription costs no query. What could be
            # missed (a lost Redis connection, a full mailbox) arrives as a resync.
            event = await subscription.get(timeout=remaining)
            if event is None:
                continue  # the subscription's lifetime is over (checked above)
            if event is RESYNC or state.needs_read(event):
                # A lost connection, a full mailbox, a big result: read the truth.
                update = state.refresh(await load())
            else:
                update = state.apply(event)
            if update is not None:
                yield update
