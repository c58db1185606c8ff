"""Use cases: register, log in, rotate refresh tokens, create an admin."""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError

from crunchql.auth.passwords import check_password_policy
from crunchql.core.errors import (
    BadUserInputError,
    ConflictError,
    RateLimitedError,
    UnauthenticatedError,
)
from crunchql.db.engine import read_only, unit_of_work
from crunchql.db.models import RefreshToken, Role, User
from crunchql.db.repositories import RefreshTokenRepository, UserRepository
from crunchql.services.container import Limits, ServiceContainer

EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_EMAIL_LENGTH = 254
LOGIN_FAILED = "Incorrect email or password."


class RefreshTokenReusedError(UnauthenticatedError):
    """A rotated refresh token came back: its whole family is revoked (and that
    revocation is committed although the operation fails)."""

    commit_changes = True


@dataclass(frozen=True)
class AuthResult:
    user: User
    access_token: str
    refresh_token: str


def normalise_email(raw: str) -> str:
    email = unicodedata.normalize("NFKC", raw).strip().lower()
    if len(email) > MAX_EMAIL_LENGTH or not EMAIL_PATTERN.match(email):
        raise BadUserInputError("Email address is not valid.", field="email")
    return email


async def _issue(
    services: ServiceContainer,
    repo: RefreshTokenRepository,
    user: User,
    family_id: uuid.UUID | None = None,
) -> AuthResult:
    now = datetime.now(UTC)
    raw = services.tokens.new_refresh_token()
    await repo.add(
        RefreshToken(
            user_id=user.id,
            family_id=family_id or uuid.uuid4(),
            token_hash=services.tokens.hash_refresh_token(raw),
            created_at=now,
            expires_at=now + services.tokens.refresh_lifetime,
        )
    )
    access = services.tokens.issue_access_token(user.id, user.role, now)
    return AuthResult(user=user, access_token=access, refresh_token=raw)


async def register(
    services: ServiceContainer, email: str, password: str, *, client: str, role: Role = Role.USER
) -> AuthResult:
    if services.limits.rate_limits:
        await services.rate_limiter.hit(
            f"register:addr:{client}",
            services.limits.register_attempts_per_address,
            services.limits.rate_limit_window_seconds,
            policy="register",
        )
    email = normalise_email(email)
    check_password_policy(password)
    password_hash = await services.hasher.hash(password)
    try:
        async with unit_of_work(services.session_factory) as session:
            users = UserRepository(session)
            if await users.get_by_email(email) is not None:
                raise ConflictError("An account with this email already exists.")
            user = await users.add(User(email=email, password_hash=password_hash, role=role))
            return await _issue(services, RefreshTokenRepository(session), user)
    except IntegrityError:
        # Two registrations of the same email raced; the unique index decided.
        raise ConflictError("An account with this email already exists.") from None


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
    services: ServiceContainer, email: str, password: str, *, client: str
) -> AuthResult:
    normalised = unicodedata.normalize("NFKC", email).strip().lower()
    limits = services.limits
    limiter = services.rate_limiter
    counted: list[str] = []
    if limits.rate_limits:
        await limiter.hit(
            f"login:addr:{client}",
            limits.login_attempts_per_address,
            limits.rate_limit_window_seconds,
            policy="login-requests",
        )
        # Every attempt counts as a failure BEFORE the password is checked, in one
        # atomic step per budget: thirty parallel guesses count thirty, and at most the
        # limit of them reach bcrypt. A right password gives its counts back below.
        try:
            for key, limit, window, policy in _failure_keys(limits, normalised, client):
                await limiter.hit(key, limit, window, policy=policy, escalate=policy == "login")
                counted.append(key)
        except RateLimitedError:
            for key in counted:
                await limiter.refund(key)  # a refused attempt is not a guess
            raise
    async with read_only(services.session_factory) as session:
        user = await UserRepository(session).get_by_email(normalised)
    # Verify even for an unknown email (against a dummy hash): same answer, same time.
    # No database connection is held during bcrypt: a login flood must not drain the pool.
    ok = await services.hasher.verify(password, user.password_hash if user else None)
    if user is None or not ok or not user.is_active:
        raise UnauthenticatedError(LOGIN_FAILED)
    for key in counted:
        await limiter.refund(key)
    async with unit_of_work(services.session_factory) as session:
        return await _issue(services, RefreshTokenRepository(session), user)


async def refresh(services: ServiceContainer, refresh_token: str) -> AuthResult:
    invalid = UnauthenticatedError("Refresh token is invalid or expired; log in again.")
    if not refresh_token or len(refresh_token) > 200:
        raise invalid
    token_hash = services.tokens.hash_refresh_token(refresh_token)
    async with unit_of_work(services.session_factory) as session:
        tokens = RefreshTokenRepository(session)
        token = await tokens.get_by_hash_for_update(token_hash)
        now = datetime.now(UTC)
        if token is None or token.revoked_at is not None or token.expires_at <= now:
            raise invalid
        if token.used_at is not None or not await tokens.mark_used(token, now):
            await tokens.revoke_family(token.family_id, now)
            raise RefreshTokenReusedError(
                "Refresh token was already used; every session from that login is revoked."
            )
        user = await UserRepository(session).get_by_id(token.user_id)
        if user is None or not user.is_active:
            raise invalid
        return await _issue(services, tokens, user, family_id=token.family_id)


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
