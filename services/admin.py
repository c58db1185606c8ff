"""Administration: list users and every calculation, change roles, disable accounts.

Authorisation (ADMIN only) is the caller's business (the GraphQL edge checks the
caller; the CLI is the operator). The last active ADMIN can never be demoted or
disabled: every such change first locks the active ADMINs' rows (PostgreSQL, across
processes), or takes a per-process lock on SQLite (which has no row locks, and whose
database belongs to one process).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import uuid
import weakref

from crunchql.core.errors import BadUserInputError, ConflictError, NotFoundError
from crunchql.db.engine import is_sqlite, read_only, unit_of_work
from crunchql.db.models import AuditAction, CalculationStatus, Role, User
from crunchql.db.repositories import (
    CalculationPage,
    CalculationRepository,
    UserPage,
    UserRepository,
)
from crunchql.services import audit
from crunchql.services.audit import ClientInfo
from crunchql.services.calculations import MAX_PAGE_SIZE, decode_cursor
from crunchql.services.container import ServiceContainer
from crunchql.services.revocation import SessionEvent
from crunchql.services.sessions import announce_after_commit, end_sessions

MAX_SEARCH_LENGTH = 320
LAST_ADMIN = "This is the last active ADMIN: promote another account first."

_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _admin_change_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock


def parse_user_id(raw: str, *, field: str = "id") -> uuid.UUID:
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise BadUserInputError("Not a valid user id.", field=field) from None


def _check_page_size(first: int) -> None:
    if not 0 <= first <= MAX_PAGE_SIZE:
        raise BadUserInputError(
            f"first must be between 0 and {MAX_PAGE_SIZE} (got {first}).", field="first"
        )


def encode_user_cursor(user: User) -> str:
    return base64.urlsafe_b64encode(f"{user.email}|{user.id}".encode()).decode()


def decode_user_cursor(cursor: str) -> tuple[str, uuid.UUID]:
    try:
        email, _, raw_id = base64.urlsafe_b64decode(cursor.encode()).decode().rpartition("|")
        return email, uuid.UUID(raw_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadUserInputError("Cursor is not valid.", field="after") from None


async def list_users(
    services: ServiceContainer, *, first: int, after: str | None, search: str | None
) -> UserPage:
    _check_page_size(first)
    if search is not None and len(search) > MAX_SEARCH_LENGTH:
        raise BadUserInputError("search is too long.", field="search")
    position = decode_user_cursor(after) if after else None
    async with read_only(services.session_factory) as session:
        return await UserRepository(session).list_page(
            first=first, after=position, search=search.strip() if search else None
        )


async def list_calculations(
    services: ServiceContainer,
    *,
    first: int,
    after: str | None,
    status: CalculationStatus | None,
    kind: str | None,
    owner_id: str | None,
) -> CalculationPage:
    _check_page_size(first)
    position = decode_cursor(after) if after else None
    owner = parse_user_id(owner_id, field="ownerId") if owner_id is not None else None
    if kind is not None and len(kind) > 64:
        raise BadUserInputError("kind is too long.", field="kind")
    async with read_only(services.session_factory) as session:
        return await CalculationRepository(session).list_all(
            first=first, after=position, status=status, kind=kind, owner_id=owner
        )


async def find_user(services: ServiceContainer, email: str) -> User:
    async with read_only(services.session_factory) as session:
        user = await UserRepository(session).get_by_email(email.strip().lower())
    if user is None:
        raise NotFoundError(f"No account with e-mail {email!r}.")
    return user


async def _change(
    services: ServiceContainer,
    actor: User | None,
    target_id: uuid.UUID,
    client: ClientInfo,
    *,
    role: Role | None = None,
    active: bool | None = None,
) -> User:
    async with contextlib.AsyncExitStack() as stack:
        if is_sqlite(services.session_factory):
            # No row locks there (one process owns an embedded database): held until
            # the transaction below has committed.
            await stack.enter_async_context(_admin_change_lock())
        session = await stack.enter_async_context(unit_of_work(services.session_factory))
        users = UserRepository(session)
        admins = await users.lock_active_admins(with_user=target_id)
        target = await users.get_by_id(target_id)
        if target is None:
            raise NotFoundError("User not found.")
        await session.refresh(target)
        old_role, old_active, email = target.role, target.is_active, target.email
        new_role = role.value if role is not None else old_role
        new_active = active if active is not None else old_active
        if new_role == old_role and new_active == old_active:
            return target  # nothing changes: no record, no session ends
        removes_admin = target_id in admins and (new_role != Role.ADMIN.value or not new_active)
        if removes_admin and len(admins) <= 1:
            raise ConflictError(LAST_ADMIN)
        updated = await users.update_fields(target_id, role=new_role, is_active=new_active)
        assert updated is not None
        actor_id = actor.id if actor is not None else None
        ends = new_role != old_role or not new_active
        if ends:
            # A new role or a disabled account: every session ends, so tokens that
            # carry the old role stop working, and so does every open subscription.
            reason = AuditAction.ROLE_CHANGED if role is not None else AuditAction.USER_DISABLED
            await end_sessions(services, session, reason, user_id=target_id)
        if new_role != old_role:
            await audit.record(
                session, AuditAction.ROLE_CHANGED, client, actor_id=actor_id,
                target_user_id=target_id, **{"from": old_role, "to": new_role},
            )  # fmt: skip
        if new_active != old_active:
            action = AuditAction.USER_ENABLED if new_active else AuditAction.USER_DISABLED
            await audit.record(
                session, action, client, actor_id=actor_id, target_user_id=target_id,
                email=email,
            )  # fmt: skip
        announce_after_commit(
            services,
            session,
            SessionEvent(user_id=target_id, account_changed=True, end_user=ends),
        )
    return updated


async def set_role(
    services: ServiceContainer, actor: User | None, raw_id: str, role: Role, client: ClientInfo
) -> User:
    return await _change(services, actor, _target(raw_id), client, role=role)


async def set_active(
    services: ServiceContainer, actor: User | None, raw_id: str, active: bool, client: ClientInfo
) -> User:
    return await _change(services, actor, _target(raw_id), client, active=active)


def _target(raw_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(raw_id))
    except ValueError:
        raise NotFoundError("User not found.") from None
