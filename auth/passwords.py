"""bcrypt hashing, always off the event loop, with a password policy."""

from __future__ import annotations

import asyncio

import bcrypt

from crunchql.core.errors import BadUserInputError

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_BYTES = 72  # bcrypt's limit; longer input is refused rather than truncated


def check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise BadUserInputError(
            f"Password must be at least {MIN_PASSWORD_LENGTH} characters long.", field="password"
        )
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise BadUserInputError(
            f"Password must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8.", field="password"
        )
    if password.strip() == "" or len(set(password)) < 4:
        raise BadUserInputError(
            "Password is too simple: use at least 4 different characters.", field="password"
        )


class PasswordHasher:
    def __init__(self, rounds: int = 12) -> None:
        self.rounds = rounds
        # Verified against when the email is unknown, so that a failed login costs the
        # same time whether or not the account exists.
        self._dummy_hash = bcrypt.hashpw(b"crunchql-timing-equaliser", bcrypt.gensalt(rounds))

    def _hash(self, password: str) -> str:
        return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(self.rounds)).decode()

    def _verify(self, password: str, password_hash: str | None) -> bool:
        encoded = password.encode("utf-8")
        if len(encoded) > MAX_PASSWORD_BYTES:
            # bcrypt 5 raises above 72 bytes; no stored password can be that long.
            encoded = encoded[:MAX_PASSWORD_BYTES]
            ok = False
        else:
            ok = True
        target = password_hash.encode() if password_hash else self._dummy_hash
        matches = bcrypt.checkpw(encoded, target)
        return ok and matches and password_hash is not None

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hash, password)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """True when ``password`` matches; with no hash, spends the same time and is False."""
        return await asyncio.to_thread(self._verify, password, password_hash)
