"""Sessions: start one per login, check one on every request, end them (logout,
logout everywhere, revoke one, password change), and announce each end."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from crunchql.auth.passwords import check_password_policy
from crunchql.auth.tokens import AccessClaims
from crunchql.core.errors import BadUserInputError, ConflictError, NotFoundError
from crunchql.db.engine import after_commit, read_only, unit_of_work
from crunchql.db.models import AuditAction, AuthSession, RefreshToken, User
from crunchql.db.repositories import (
    AuthSessionRepository,
    RefreshTokenRepository,
    UserRepository,
)
from crunchql.services import audit
from crunchql.services.audit import ClientInfo
from crunchql.services.container import ServiceContainer
from crunchql.services.revocation import SessionEndedError, SessionEvent

# lastUsedAt is written at most this often per session (it is a write on a read path).
TOUCH_EVERY = timedelta(minutes=1)
CURRENT_PASSWORD_WRONG = "Current password is incorrect."  # noqa: S105 - a message


@dataclass(frozen=True)
class AuthResult:
    user: User
    access_token: str
    refresh_token: str
    session_id: uuid.UUID


# ---- issuing -------------------------------------------------------------------------


async def issue_tokens(
    services: ServiceContainer,
    session: AsyncSession,
    user: User,
    auth_session: AuthSession,
    now: datetime,
) -> AuthResult:
    """A new refresh token of ``auth_session`` (ending where the session ends) and an
    access token bound to it."""
    raw = services.tokens.new_refresh_token()
    await RefreshTokenRepository(session).add(
        RefreshToken(
            user_id=user.id,
            family_id=auth_session.id,
            token_hash=services.tokens.hash_refresh_token(raw),
            created_at=now,
            expires_at=auth_session.expires_at,
        )
    )
    access = services.tokens.issue_access_token(
        user.id,
        user.role,
        now,
        session_id=auth_session.id,
        session_expires_at=auth_session.expires_at,
    )
    return AuthResult(user=user, access_token=access, refresh_token=raw, session_id=auth_session.id)


async def start_session(
    services: ServiceContainer, session: AsyncSession, user: User, client: ClientInfo
) -> AuthResult:
    """A new session (login, register, password change), valid for the refresh
    lifetime from now and never longer."""
    now = datetime.now(UTC)
    auth_session = await AuthSessionRepository(session).add(
        AuthSession(
            id=uuid.uuid4(),
            user_id=user.id,
            created_at=now,
            last_used_at=now,
            expires_at=now + services.tokens.refresh_lifetime,
            user_agent=client.user_agent,
            address=client.address,
        )
    )
    return await issue_tokens(services, session, user, auth_session, now)


# ---- ending ----------------------------------------------------------------------------


async def announce(services: ServiceContainer, event: SessionEvent) -> None:
    """Tell this process at once and every other one through the bus."""
    services.session_guard.apply(event)
    if event.account_changed and event.user_id is not None:
        services.user_cache.pop(event.user_id, None)
    await services.bus.publish_session_event(event.encode())


def announce_after_commit(
    services: ServiceContainer, session: AsyncSession, event: SessionEvent
) -> None:
    async def send() -> None:
        await announce(services, event)

    after_commit(session, send)


async def end_sessions(
    services: ServiceContainer,
    session: AsyncSession,
    reason: AuditAction,
    *,
    session_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    """Revoke in the caller's transaction; announced once it commits."""
    ended = await AuthSessionRepository(session).revoke(
        datetime.now(UTC), reason.value, session_id=session_id, user_id=user_id
    )
    if ended:
        announce_after_commit(services, session, SessionEvent(session_ids=tuple(ended)))
    return ended


# ---- the check on every request ------------------------------------------------------


async def ensure_live(services: ServiceContainer, claims: AccessClaims) -> None:
    """Refuse an access token whose session ended. Hot path: a revoked session is
    known from the bus at once; a live one is re-read from the database only every
    few seconds (the guard's recheck bound)."""
    guard = services.session_guard
    session_id = claims.session_id
    if session_id in guard.revoked:
        raise SessionEndedError()
    now = datetime.now(UTC)
    expires_at = guard.live.get(session_id)
    if expires_at is None:
        async with read_only(services.session_factory) as session:
            row = await AuthSessionRepository(session).get(session_id)
        if row is None or row.revoked_at is not None or row.user_id != claims.user_id:
            guard.revoked[session_id] = True
            raise SessionEndedError()
        expires_at = row.expires_at
        if row.last_used_at < now - TOUCH_EVERY:
            async with unit_of_work(services.session_factory) as session:
                await AuthSessionRepository(session).touch(session_id, now)
        guard.live[session_id] = expires_at
    if expires_at <= now:
        raise SessionEndedError("This session has expired; log in again.")


# ---- use cases -------------------------------------------------------------------------


async def list_live(services: ServiceContainer, user: User) -> list[AuthSession]:
    async with read_only(services.session_factory) as session:
        return await AuthSessionRepository(session).list_live_for_user(user.id, datetime.now(UTC))


async def logout(services: ServiceContainer, refresh_token: str, client: ClientInfo) -> bool:
    """End the session of ``refresh_token``; False when it names no live session."""
    if not refresh_token or len(refresh_token) > 200:
        return False
    token_hash = services.tokens.hash_refresh_token(refresh_token)
    async with unit_of_work(services.session_factory) as session:
        token = await RefreshTokenRepository(session).get_by_hash_for_update(token_hash)
        if token is None:
            return False
        ended = await end_sessions(
            services, session, AuditAction.LOGGED_OUT, session_id=token.family_id
        )
        if not ended:
            return False
        await audit.record(
            session,
            AuditAction.LOGGED_OUT,
            client,
            actor_id=token.user_id,
            target_user_id=token.user_id,
            sessionId=str(token.family_id),
        )
    return True


async def logout_everywhere(services: ServiceContainer, user: User, client: ClientInfo) -> bool:
    async with unit_of_work(services.session_factory) as session:
        ended = await end_sessions(
            services, session, AuditAction.LOGGED_OUT_EVERYWHERE, user_id=user.id
        )
        await audit.record(
            session,
            AuditAction.LOGGED_OUT_EVERYWHERE,
            client,
            actor_id=user.id,
            target_user_id=user.id,
            sessions=len(ended),
        )
    return True


async def revoke(services: ServiceContainer, user: User, raw_id: str, client: ClientInfo) -> bool:
    """End one of the caller's sessions; False when it had already ended."""
    try:
        session_id = uuid.UUID(str(raw_id))
    except ValueError:
        raise NotFoundError("Session not found.") from None
    async with unit_of_work(services.session_factory) as session:
        row = await AuthSessionRepository(session).get(session_id)
        if row is None or row.user_id != user.id:
            raise NotFoundError("Session not found.")
        ended = await end_sessions(
            services, session, AuditAction.SESSION_REVOKED, session_id=session_id
        )
        if not ended:
            return False
        await audit.record(
            session,
            AuditAction.SESSION_REVOKED,
            client,
            actor_id=user.id,
            target_user_id=user.id,
            sessionId=str(session_id),
        )
    return True


async def change_password(
    services: ServiceContainer,
    user: User,
    current_password: str,
    new_password: str,
    client: ClientInfo,
) -> AuthResult:
    """Check the current password, apply the policy, then in one transaction: the new
    hash, every session ended, a new session started."""
    limits = services.limits
    key = f"password:fail:{user.id}"
    if limits.rate_limits:
        # Guessing the current password with a stolen access token is brute force
        # like any other: the same allowance as a login, counted before bcrypt (so
        # parallel guesses cannot overrun it) and given back when the password is right.
        await services.rate_limiter.hit(
            key,
            limits.login_attempts_per_account,
            limits.rate_limit_window_seconds,
            policy="change-password",
        )
    async with read_only(services.session_factory) as session:
        stored = await UserRepository(session).get_by_id(user.id)
    if stored is None:
        raise SessionEndedError()
    if not await services.hasher.verify(current_password, stored.password_hash):
        raise BadUserInputError(CURRENT_PASSWORD_WRONG, field="currentPassword")
    if limits.rate_limits:
        await services.rate_limiter.refund(key)
    await asyncio.to_thread(check_password_policy, new_password, email=stored.email)
    if new_password == current_password:
        raise BadUserInputError(
            "The new password must differ from the current one.", field="newPassword"
        )
    new_hash = await services.hasher.hash(new_password)
    async with unit_of_work(services.session_factory) as session:
        users = UserRepository(session)
        # Conditional on the hash just verified: of two concurrent changes, one wins.
        updated = await users.update_fields(
            user.id, User.password_hash == stored.password_hash, password_hash=new_hash
        )
        if updated is None:
            raise ConflictError("The password was changed meanwhile; log in again.")
        await end_sessions(services, session, AuditAction.PASSWORD_CHANGED, user_id=user.id)
        result = await start_session(services, session, updated, client)
        await audit.record(
            session,
            AuditAction.PASSWORD_CHANGED,
            client,
            actor_id=user.id,
            target_user_id=user.id,
            sessionId=str(result.session_id),
        )
    return result
