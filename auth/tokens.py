"""Access tokens (PyJWT, algorithm pinned, every registered claim checked) and
opaque refresh tokens (only their SHA-256 is stored)."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from cachetools import TTLCache

from crunchql.core.errors import UnauthenticatedError


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    role: str
    token_id: str
    expires_at: datetime
    # The session (refresh-token family) the token was issued for: revoking the
    # session refuses the token before it expires.
    session_id: uuid.UUID


class TokenService:
    def __init__(
        self,
        *,
        secret: str,
        algorithm: str = "HS256",
        issuer: str = "crunchql",
        audience: str = "crunchql-api",
        access_lifetime: timedelta = timedelta(minutes=15),
        refresh_lifetime: timedelta = timedelta(days=30),
    ) -> None:
        self._secret = secret
        self.algorithm = algorithm
        self.issuer = issuer
        self.audience = audience
        self.access_lifetime = access_lifetime
        self.refresh_lifetime = refresh_lifetime
        # Tokens already verified, for a minute: a client sends the same token with
        # every request, and verifying it (strict base64 checks, HMAC) costs more than
        # a small query. Expiry is still checked on every use by the caller.
        self._verified: TTLCache[str, AccessClaims] = TTLCache(maxsize=10_000, ttl=60)

    def issue_access_token(
        self,
        user_id: uuid.UUID,
        role: str,
        now: datetime | None = None,
        *,
        session_id: uuid.UUID,
        session_expires_at: datetime | None = None,
    ) -> str:
        """A signed access token of ``session_id``; it never outlives the session."""
        now = now or datetime.now(UTC)
        expires = now + self.access_lifetime
        if session_expires_at is not None:
            expires = min(expires, session_expires_at)
        claims = {
            "sub": str(user_id),
            "sid": str(session_id),
            "role": role,
            "iat": now,
            "nbf": now,
            "exp": expires,
            "iss": self.issuer,
            "aud": self.audience,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm=self.algorithm)

    def decode_access_token(self, token: str) -> AccessClaims:
        cached = self._verified.get(token)
        if cached is not None:
            if cached.expires_at <= datetime.now(UTC):
                raise UnauthenticatedError("Access token has expired; refresh it.")
            return cached
        claims = self._decode(token)
        self._verified[token] = claims
        return claims

    def _decode(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                # A token without a session (issued before sessions existed) cannot be
                # revoked, so it is refused: its holder refreshes or logs in again.
                options={"require": ["exp", "iat", "sub", "sid", "jti", "iss", "aud"]},
                leeway=5,
            )
            return AccessClaims(
                user_id=uuid.UUID(claims["sub"]),
                role=str(claims.get("role", "USER")),
                token_id=str(claims["jti"]),
                expires_at=datetime.fromtimestamp(claims["exp"], UTC),
                session_id=uuid.UUID(str(claims["sid"])),
            )
        except jwt.ExpiredSignatureError:
            raise UnauthenticatedError("Access token has expired; refresh it.") from None
        except (jwt.InvalidTokenError, ValueError, KeyError, TypeError):
            raise UnauthenticatedError("Access token is invalid.") from None

    @staticmethod
    def new_refresh_token() -> str:
        return secrets.token_urlsafe(32)

    @staticmethod
    def hash_refresh_token(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8")).hexdigest()
