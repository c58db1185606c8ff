"""JWT (PyJWT, HS256) and bcrypt, as in FastAPI's "OAuth2 with JWT" tutorial."""

from __future__ import annotations

import os
import secrets
import uuid
from datetime import timedelta

import bcrypt
import jwt

from benchmarks.classic.db import utcnow

ALGORITHM = "HS256"
TOKEN_LIFETIME = timedelta(hours=1)


# Without CLASSIC_JWT_SECRET, a random one per process: no signing key in the repository.
_FALLBACK_SECRET = secrets.token_urlsafe(32)


def secret() -> str:
    return os.environ.get("CLASSIC_JWT_SECRET") or _FALLBACK_SECRET


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()


def issue_token(user_id: uuid.UUID) -> str:
    now = utcnow()
    claims = {"sub": str(user_id), "iat": now, "exp": now + TOKEN_LIFETIME}
    return jwt.encode(claims, secret(), algorithm=ALGORITHM)


def user_id_from_token(token: str) -> uuid.UUID | None:
    """The token's user id, or None for a bad, expired or forged token."""
    try:
        claims = jwt.decode(token, secret(), algorithms=[ALGORITHM], options={"require": ["exp"]})
        return uuid.UUID(claims["sub"])
    except (jwt.InvalidTokenError, KeyError, ValueError):
        return None
