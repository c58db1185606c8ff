"""Unexpected failures reach the client as INTERNAL_SERVER_ERROR with no detail."""

from __future__ import annotations

import logging

import pytest

from crunchql.services import calculations
from tests.conftest import GraphQLClient, error_codes


async def test_unexpected_error_is_masked_and_logged(
    client: GraphQLClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client.token = (await client.register())["accessToken"]

    async def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("connection to db-internal:5432 failed, password=hunter2")

    monkeypatch.setattr(calculations, "list_own", explode)
    with caplog.at_level(logging.ERROR, logger="crunchql.graphql"):
        body = await client.execute("{ calculations { edges { cursor } } }")
    assert error_codes(body) == ["INTERNAL_SERVER_ERROR"]
    error = body["errors"][0]
    assert error["message"] == "Internal server error."
    assert "hunter2" not in str(body) and "db-internal" not in str(body)
    assert error["extensions"]["requestId"]
    # The detail is in the log, under the same request id, for the operator.
    assert any(error["extensions"]["requestId"] in r.getMessage() for r in caplog.records)
    assert any(r.exc_info and "db-internal" in str(r.exc_info[1]) for r in caplog.records)


async def test_request_id_from_the_client_is_kept(
    client: GraphQLClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.token = (await client.register())["accessToken"]

    async def explode(*_args: object, **_kwargs: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(calculations, "list_own", explode)
    body = await client.execute(
        "{ calculations { edges { cursor } } }", headers={"X-Request-ID": "req-abc-123"}
    )
    assert body["errors"][0]["extensions"]["requestId"] == "req-abc-123"
