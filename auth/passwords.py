"""bcrypt hashing, always off the event loop, with a password policy."""

from __future__ import annotations

import asyncio

import bcrypt
from zxcvbn import zxcvbn

from crunchql.core.errors import BadUserInputError

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_BYTES = 72  # bcrypt's limit; longer input is refused rather than truncated
# zxcvbn's scale: 3 is "safely unguessable: moderate protection from an offline attack"
# (about 10^8 guesses or more); 0-2 covers common passwords and their variations.
MIN_STRENGTH_SCORE = 3
# Shorter local parts ("al@...") would refuse half the dictionary for no gain.
MIN_LOCAL_PART_CHECKED = 3
POLICY = (
    f"a password needs at least {MIN_PASSWORD_LENGTH} characters and at most "
    f"{MAX_PASSWORD_BYTES} bytes (UTF-8), must not be a common or easily guessed "
    "password, and must not contain the name part of your e-mail address"
)


def _refuse(problem: str, field: str) -> BadUserInputError:
    return BadUserInputError(f"{problem} Rule: {POLICY}.", field=field)


def check_password_policy(
    password: str, *, email: str | None = None, field: str = "password"
) -> None:
    """Raise BAD_USER_INPUT, stating the rule, unless ``password`` follows the policy.

    CPU-bound for long inputs (tens of milliseconds): async callers run it in a thread.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise _refuse(f"Password must be at least {MIN_PASSWORD_LENGTH} characters long.", field)
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise _refuse(f"Password must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8.", field)
    if password.strip() == "" or len(set(password)) < 4:
        raise _refuse("Password is too simple: use at least 4 different characters.", field)
    local_part = email.partition("@")[0].lower() if email else ""
    if len(local_part) >= MIN_LOCAL_PART_CHECKED and local_part in password.lower():
        raise _refuse("Password must not contain your e-mail address's name.", field)
    strength = zxcvbn(password, user_inputs=[local_part] if local_part else [])
    if strength["score"] < MIN_STRENGTH_SCORE:
        warning = strength["feedback"].get("warning") or "It is too easy to guess."
        raise _refuse(f"Password is too common or easy to guess: {warning}", field)


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
