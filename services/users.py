"""Use cases: register, log in, rotate refresh tokens, create an admin.

Every login or register starts a session (services/sessions.py); each is audited."""

from __future__ import annotations

import asyncio
import re
import unicodedata
import uuid
from datetime import UTC, datetime

from cachetools import TTLCache
from sqlalchemy.exc import IntegrityError

from crunchql.auth.passwords import check_password_policy
from crunchql.core.errors import (
    BadUserInputError,
    ConflictError,
    RateLimitedError,
    UnauthenticatedError,
)
from crunchql.db.engine import read_only, unit_of_work
from crunchql.db.models import AuditAction, Role, User
from crunchql.db.repositories import AuthSessionRepository, RefreshTokenRepository, UserRepository
from crunchql.services import audit
from crunchql.services.audit import ClientInfo
from crunchql.services.container import Limits, ServiceContainer
from crunchql.services.sessions import AuthResult, end_sessions, issue_tokens, start_session

EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_EMAIL_LENGTH = 254
LOGIN_FAILED = "Incorrect email or password."


class RefreshTokenReusedError(UnauthenticatedError):
    """A rotated refresh token came back: its whole session is revoked (committed
    before this error is raised)."""


def normalise_email(raw: str) -> str:
    email = unicodedata.normalize("NFKC", raw).strip().lower()
    if len(email) > MAX_EMAIL_LENGTH or not EMAIL_PATTERN.match(email):
        raise BadUserInputError("Email address is not valid.", field="email")
    return email


async def register(
    services: ServiceContainer,
    email: str,
    password: str,
    *,
    client: str,
    role: Role = Role.USER,
    user_agent: str | None = None,
) -> AuthResult:
    info = ClientInfo.of(client, user_agent)
    if services.limits.rate_limits:
        await services.rate_limiter.hit(
            f"register:addr:{client}",
            services.limits.register_attempts_per_address,
            services.limits.rate_limit_window_seconds,
            policy="register",
        )
    email = normalise_email(email)
    await asyncio.to_thread(check_password_policy, password, email=email)
    password_hash = await services.hasher.hash(password)
    try:
        async with unit_of_work(services.session_factory) as session:
            users = UserRepository(session)
            if await users.get_by_email(email) is not None:
                raise ConflictError("An account with this email already exists.")
            user = await users.add(User(email=email, password_hash=password_hash, role=role))
            result = await start_session(services, session, user, info)
            await audit.record(
                session,
                AuditAction.REGISTERED,
                info,
                actor_id=user.id,
                target_user_id=user.id,
                email=email,
            )
            return result
    except IntegrityError:
        # Two registrations of the same email raced; the unique index decided.
        raise ConflictError("An account with this email already exists.") from None


# A refused flood is recorded once per (account, address) and minute per process, not
# once per attempt: the audit log must not become the flood's target.
_rate_limited_recorded: TTLCache[tuple[str, str], bool] = TTLCache(10_000, 60)
ACCOUNT_CEILING_WINDOW_SECONDS = 3600


def _failure_keys(limits: Limits, account: str, client: str) -> list[tuple[str, int, int, str]]:
    """The failure budgets one login draws on: (key, limit, window, policy name)."""
    window = limits.rate_limit_window_seconds
    return [
        # The brute-force brake: one address guessing one account's password. Locking
        # out this pair leaves the owner's own address untouched.
        (f"login:fail:{account}:{client}", limits.login_attempts_per_account, window, "login"),
        # One address spraying one password over many accounts.
        (f"login:fail-addr:{client}", limits.login_failures_per_address, window, "login-address"),
        # A distributed guess at one account: a ceiling far above what its owner reaches.
        (
            f"login:fail-acct:{account}",
            limits.login_failures_per_account,
            ACCOUNT_CEILING_WINDOW_SECONDS,
            "login-account",
        ),
    ]


async def login(
    services: ServiceContainer,
    email: str,
    password: str,
    *,
    client: str,
    user_agent: str | None = None,
) -> AuthResult:
    info = ClientInfo.of(client, user_agent)
    normalised = unicodedata.normalize("NFKC", email).strip().lower()
    limits = services.limits
    limiter = services.rate_limiter
    counted: list[str] = []
    if limits.rate_limits:
        try:
            await limiter.hit(
                f"login:addr:{client}",
                limits.login_attempts_per_address,
                limits.rate_limit_window_seconds,
                policy="login-requests",
            )
            # Every attempt counts as a failure BEFORE the password is checked, in one
            # atomic step per budget: thirty parallel guesses count thirty, and at most
            # the limit of them reach bcrypt. A right password gives its counts back below.
            try:
                for key, limit, window, policy in _failure_keys(limits, normalised, client):
                    await limiter.hit(key, limit, window, policy=policy, escalate=policy == "login")
                    counted.append(key)
            except RateLimitedError:
                for key in counted:
                    await limiter.refund(key)  # a refused attempt is not a guess
                raise
        except RateLimitedError:
            if (normalised, client) not in _rate_limited_recorded:
                _rate_limited_recorded[(normalised, client)] = True
                await audit.record_alone(
                    services.session_factory, AuditAction.LOGIN_RATE_LIMITED, info,
                    email=normalised[:MAX_EMAIL_LENGTH],
                )  # fmt: skip
            raise
    async with read_only(services.session_factory) as session:
        user = await UserRepository(session).get_by_email(normalised)
    # Verify even for an unknown email (against a dummy hash): same answer, same time.
    # No database connection is held during bcrypt: a login flood must not drain the pool.
    ok = await services.hasher.verify(password, user.password_hash if user else None)
    if user is None or not ok or not user.is_active:
        reason = "unknown email" if user is None else "wrong password" if not ok else "disabled"
        await audit.record_alone(
            services.session_factory,
            AuditAction.LOGIN_FAILED,
            info,
            target_user_id=user.id if user else None,
            email=normalised[:MAX_EMAIL_LENGTH],
            reason=reason,
        )
        raise UnauthenticatedError(LOGIN_FAILED)
    for key in counted:
        await limiter.refund(key)
    async with unit_of_work(services.session_factory) as session:
        # Conditional on the account still being active: disabled during bcrypt means
        # no session.
        current = await UserRepository(session).update_fields(
            user.id, User.is_active.is_(True), last_login_at=datetime.now(UTC)
        )
        if current is None:
            raise UnauthenticatedError(LOGIN_FAILED)
        result = await start_session(services, session, current, info)
        await audit.record(
            session,
            AuditAction.LOGIN_SUCCEEDED,
            info,
            actor_id=user.id,
            target_user_id=user.id,
            sessionId=str(result.session_id),
        )
        return result


async def refresh(
    services: ServiceContainer,
    refresh_token: str,
    *,
    client: str = "",
    user_agent: str | None = None,
) -> AuthResult:
    invalid = UnauthenticatedError("Refresh token is invalid or expired; log in again.")
    if not refresh_token or len(refresh_token) > 200:
        raise invalid
    token_hash = services.tokens.hash_refresh_token(refresh_token)
    reused = False
    async with unit_of_work(services.session_factory) as session:
        tokens = RefreshTokenRepository(session)
        token = await tokens.get_by_hash_for_update(token_hash)
        now = datetime.now(UTC)
        if token is None or token.revoked_at is not None or token.expires_at <= now:
            raise invalid
        auth_session = await AuthSessionRepository(session).get(token.family_id)
        if (
            auth_session is None
            or auth_session.revoked_at is not None
            or auth_session.expires_at <= now
        ):
            raise invalid
        if token.used_at is not None or not await tokens.mark_used(token, now):
            # Reuse: whoever holds the other copy must lose it too. The revocation is
            # committed (and announced) before the error goes out.
            await tokens.revoke_family(token.family_id, now)
            await end_sessions(
                services, session, AuditAction.REFRESH_TOKEN_REUSED, session_id=token.family_id
            )
            await audit.record(
                session,
                AuditAction.REFRESH_TOKEN_REUSED,
                ClientInfo.of(client or None, user_agent),
                actor_id=token.user_id,
                target_user_id=token.user_id,
                sessionId=str(token.family_id),
            )
            reused = True
        else:
            user = await UserRepository(session).get_by_id(token.user_id)
            if user is None or not user.is_active:
                raise invalid
            await AuthSessionRepository(session).touch(auth_session.id, now)
            return await issue_tokens(services, session, user, auth_session, now)
    assert reused
    raise RefreshTokenReusedError(
        "Refresh token was already used; every session from that login is revoked."
    )


async def get_active_user(services: ServiceContainer, user_id: uuid.UUID) -> User | None:
    """The user behind a token, if still active: from the process's short-lived cache,
    else the database (so a disabled account is refused within the cache time, on
    HTTP and on long-lived WebSockets alike)."""
    user = services.user_cache.get(user_id)
    if user is None:
        async with read_only(services.session_factory) as session:
            user = await UserRepository(session).get_by_id(user_id)
        if user is None:
            return None
        services.user_cache[user_id] = user
    return user if user.is_active else None
