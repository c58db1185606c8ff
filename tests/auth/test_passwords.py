from __future__ import annotations

import asyncio
import time

import pytest

from crunchql.auth.passwords import PasswordHasher, check_password_policy
from crunchql.core.errors import BadUserInputError


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short", "at least 10"),
        ("a" * 73, "at most 72 bytes"),
        ("é" * 40, "at most 72 bytes"),
        ("aaaaaaaaaaaa", "too simple"),
        (" " * 12, "too simple"),
    ],
)
def test_policy_refuses_with_a_clear_message(password: str, reason: str) -> None:
    with pytest.raises(BadUserInputError, match=reason):
        check_password_policy(password)


def test_policy_accepts_a_reasonable_password() -> None:
    check_password_policy("correct horse battery")
    check_password_policy("correct horse battery", email="ada@example.com")


@pytest.mark.parametrize(
    "password", ["password1234", "qwertyuiop", "1234567890", "iloveyou12", "Password123!"]
)
def test_common_passwords_are_refused_with_the_rule_stated(password: str) -> None:
    with pytest.raises(BadUserInputError) as refused:
        check_password_policy(password)
    message = refused.value.message
    assert "common" in message
    # The whole rule is in the message, so a client can show it as is.
    for part in ("at least 10 characters", "at most 72 bytes", "e-mail"):
        assert part in message
    assert refused.value.extensions == {"field": "password"}


def test_password_must_not_contain_the_email_name() -> None:
    with pytest.raises(BadUserInputError, match="e-mail address's name"):
        check_password_policy("Lovelace-orbit-tulip", email="lovelace@example.com")
    # A very short name part is not checked (it would refuse half the dictionary).
    check_password_policy("correct horse battery", email="co@example.com")


async def test_default_cost_is_twelve() -> None:
    hashed = await PasswordHasher().hash("correct horse battery")
    assert hashed.startswith("$2b$12$")


async def test_verify_matches_only_the_right_password() -> None:
    hasher = PasswordHasher(rounds=4)
    hashed = await hasher.hash("correct horse battery")
    assert await hasher.verify("correct horse battery", hashed)
    assert not await hasher.verify("wrong horse battery", hashed)
    assert not await hasher.verify("x" * 100, hashed)  # over bcrypt's limit: no exception
    assert not await hasher.verify("correct horse battery", None)


async def test_hashing_does_not_block_the_event_loop() -> None:
    hasher = PasswordHasher(rounds=12)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    await hasher.hash("correct horse battery")
    elapsed = time.perf_counter() - started
    task.cancel()
    # With bcrypt on the loop the ticker would not run at all during the hash.
    assert ticks >= max(3, int(elapsed / 0.005 * 0.3)), (ticks, elapsed)
