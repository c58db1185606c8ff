from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from crunchql.auth.tokens import TokenService
from crunchql.core.errors import UnauthenticatedError

SECRET = "s" * 64


def service(**overrides: object) -> TokenService:
    return TokenService(secret=SECRET, **overrides)  # type: ignore[arg-type]


def test_round_trip_carries_user_and_role() -> None:
    user_id = uuid.uuid4()
    claims = service().decode_access_token(
        service().issue_access_token(user_id, "ADMIN", session_id=uuid.uuid4())
    )
    assert claims.user_id == user_id
    assert claims.role == "ADMIN"


def test_token_has_every_registered_claim() -> None:
    token = service().issue_access_token(uuid.uuid4(), "USER", session_id=uuid.uuid4())
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="crunchql-api")
    assert {"exp", "iat", "sub", "jti", "iss", "aud"} <= set(claims)
    assert claims["exp"] - claims["iat"] == 15 * 60


def test_tampered_token_is_refused() -> None:
    token = service().issue_access_token(uuid.uuid4(), "USER", session_id=uuid.uuid4())
    header, _payload, signature = token.split(".")
    forged = jwt.encode(
        {**jwt.decode(token, options={"verify_signature": False}), "role": "ADMIN"},
        "another-secret-" + "x" * 40,
    ).split(".")[1]
    with pytest.raises(UnauthenticatedError):
        service().decode_access_token(f"{header}.{forged}.{signature}")


def test_alg_none_is_refused() -> None:
    now = datetime.now(UTC)
    claims = {
        "sub": str(uuid.uuid4()),
        "iat": now,
        "exp": now + timedelta(minutes=5),
        "iss": "crunchql",
        "aud": "crunchql-api",
        "jti": "x",
        "role": "ADMIN",
    }
    unsigned = jwt.encode(claims, key=None, algorithm="none")  # type: ignore[arg-type]
    with pytest.raises(UnauthenticatedError):
        service().decode_access_token(unsigned)


def test_expired_token_says_so() -> None:
    old = datetime.now(UTC) - timedelta(hours=1)
    token = service().issue_access_token(uuid.uuid4(), "USER", now=old, session_id=uuid.uuid4())
    with pytest.raises(UnauthenticatedError, match="expired"):
        service().decode_access_token(token)


def test_wrong_audience_and_issuer_are_refused() -> None:
    token = service(audience="someone-else").issue_access_token(
        uuid.uuid4(), "USER", session_id=uuid.uuid4()
    )
    with pytest.raises(UnauthenticatedError):
        service().decode_access_token(token)
    token = service(issuer="evil").issue_access_token(uuid.uuid4(), "USER", session_id=uuid.uuid4())
    with pytest.raises(UnauthenticatedError):
        service().decode_access_token(token)


def test_other_algorithm_with_same_secret_is_refused() -> None:
    token = service(algorithm="HS512").issue_access_token(
        uuid.uuid4(), "USER", session_id=uuid.uuid4()
    )
    with pytest.raises(UnauthenticatedError):
        service().decode_access_token(token)


def test_refresh_tokens_are_random_and_stored_hashed() -> None:
    first, second = TokenService.new_refresh_token(), TokenService.new_refresh_token()
    assert first != second and len(first) >= 40
    digest = TokenService.hash_refresh_token(first)
    assert len(digest) == 64 and first not in digest


async def test_a_verified_token_is_remembered_but_still_expires() -> None:
    from datetime import timedelta

    from tests.conftest import wait_for

    tokens = service(access_lifetime=timedelta(seconds=1))
    token = tokens.issue_access_token(uuid.uuid4(), "USER", session_id=uuid.uuid4())
    first = tokens.decode_access_token(token)
    assert tokens.decode_access_token(token) is first  # from the cache: no second verify

    async def expired() -> bool:
        try:
            tokens.decode_access_token(token)
        except UnauthenticatedError:
            return True
        return False

    await wait_for(expired, timeout=10)
