"""No password, token or secret ever reaches a log line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from crunchql.core.logging import configure_logging, redact_text
from tests.conftest import make_settings, running_app


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(make_settings(log_json=True))
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)  # type: ignore[attr-defined]
    yield stream
    logging.getLogger().handlers.clear()


def test_bearer_tokens_jwts_and_url_passwords_are_redacted() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlLXZhbHVl"
    text = f"Authorization: Bearer {jwt} postgresql://app:hunter2@db/app"
    redacted = redact_text(text)
    assert jwt not in redacted and "hunter2" not in redacted
    assert "postgresql://app:[redacted]@db/app" in redacted
    access = '127.0.0.1:5 - "GET /graphql?query=mutation%7Blogin(password:%22pw%22)%7D HTTP/1.1"'
    assert redact_text(access) == '127.0.0.1:5 - "GET /graphql?[redacted] HTTP/1.1"'


def test_secret_fields_are_redacted_in_structured_lines(captured: io.StringIO) -> None:
    logging.getLogger("crunchql.test").warning(
        "login for %s", "ada@example.com", extra={"password": "correct horse battery"}
    )
    import structlog

    structlog.get_logger("crunchql.test").warning(
        "event", password="correct horse battery", refresh_token="abc123secret", detail="ok"
    )
    output = captured.getvalue()
    assert "correct horse battery" not in output and "abc123secret" not in output
    lines = [json.loads(line) for line in output.splitlines()]
    assert lines[-1]["password"] == "[redacted]" and lines[-1]["detail"] == "ok"


async def test_a_whole_auth_session_leaves_no_secret_in_the_logs(
    captured: io.StringIO, empty_sqlite_url: str
) -> None:
    password = "correct horse battery staple"
    settings = make_settings(database_url=empty_sqlite_url, log_json=True, log_level="DEBUG")
    async with running_app(settings) as (_, client):
        root = logging.getLogger()
        root.setLevel(logging.DEBUG)
        registered = await client.register("secretive@example.com", password)
        await client.execute(
            "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }",
            {"e": "secretive@example.com", "p": "wrong password!!"},
        )
        await client.execute("{ me { id } }", token=registered["accessToken"])
        await client.execute(
            "mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken } }",
            {"t": registered["refreshToken"]},
        )
        await client.execute("{ me { id } }", token=registered["accessToken"] + "tampered")
    output = captured.getvalue()
    assert output  # something was logged
    for secret in (password, "wrong password!!", registered["accessToken"],
                   registered["refreshToken"], settings.jwt_secret):  # fmt: skip
        assert secret not in output
