"""GraphQL over HTTP (graphql-http's server audit, as plain assertions), plus the
contract's transport rules: every answer is JSON with an ``errors`` array, never plain
text; a malformed request is a 400."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.conftest import make_settings, running_app

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
APPLICATION_JSON = "application/json"
BOTH = [GRAPHQL_RESPONSE_JSON, APPLICATION_JSON]
CODES = {
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "NOT_FOUND",
    "BAD_USER_INPUT",
    "RATE_LIMITED",
    "CONFLICT",
    "INTERNAL_SERVER_ERROR",
}


@pytest.fixture(scope="module")
async def app_and_http(sqlite_url: str) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    async with running_app(make_settings(database_url=sqlite_url)) as (app, graphql):
        yield app, graphql.http


@pytest.fixture
def http(app_and_http: tuple[Any, httpx.AsyncClient]) -> httpx.AsyncClient:
    return app_and_http[1]


def media_type(response: httpx.Response) -> str:
    content_type: str = response.headers.get("content-type", "")
    return content_type.split(";")[0].strip()


def json_errors(response: httpx.Response, expected_media: str = APPLICATION_JSON) -> list[Any]:
    """The response is JSON (not plain text) and holds a non-empty ``errors`` array
    whose entries carry a message and a contract code."""
    assert media_type(response) == expected_media, response.headers
    body = response.json()
    assert isinstance(body, dict), body
    errors = body.get("errors")
    assert isinstance(errors, list) and errors, body
    for error in errors:
        assert isinstance(error["message"], str) and error["message"]
        assert error["extensions"]["code"] in CODES, error
    return errors


async def post_json(
    http: httpx.AsyncClient, payload: object, accept: str | None = APPLICATION_JSON
) -> httpx.Response:
    headers = {"content-type": APPLICATION_JSON}
    if accept is not None:
        headers["accept"] = accept
    return await http.post("/graphql", content=json.dumps(payload), headers=headers)


# ---- media types ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (GRAPHQL_RESPONSE_JSON, GRAPHQL_RESPONSE_JSON),
        (APPLICATION_JSON, APPLICATION_JSON),
        ("*/*", APPLICATION_JSON),
        (None, APPLICATION_JSON),
        ("", APPLICATION_JSON),
        ("application/*", APPLICATION_JSON),
        (f"{GRAPHQL_RESPONSE_JSON}, {APPLICATION_JSON}", GRAPHQL_RESPONSE_JSON),
        (f"{APPLICATION_JSON}, {GRAPHQL_RESPONSE_JSON}", APPLICATION_JSON),
        (f"{APPLICATION_JSON};q=0.5, {GRAPHQL_RESPONSE_JSON}", GRAPHQL_RESPONSE_JSON),
        (f"{GRAPHQL_RESPONSE_JSON};q=0.1, {APPLICATION_JSON}", APPLICATION_JSON),
        (f"{GRAPHQL_RESPONSE_JSON};charset=utf-8", GRAPHQL_RESPONSE_JSON),
        (f"{APPLICATION_JSON};q=0, */*", GRAPHQL_RESPONSE_JSON),
        ("text/html,application/xhtml+xml,*/*;q=0.8", APPLICATION_JSON),
    ],
)
async def test_response_media_type_follows_accept(
    http: httpx.AsyncClient, accept: str | None, expected: str
) -> None:
    response = await post_json(http, {"query": "{ __typename }"}, accept=accept)
    assert response.status_code == 200
    assert media_type(response) == expected
    assert response.json()["data"] == {"__typename": "Query"}


async def test_responses_are_utf8(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/graphql",
        content='{"query": "{ __typename }", "variables": {"x": "π ✓"}}'.encode(),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200
    assert response.content.decode("utf-8")
    assert response.json()["data"] == {"__typename": "Query"}


@pytest.mark.parametrize("accept", ["application/xml", "text/plain", "image/png;q=1, */*;q=0"])
async def test_unacceptable_accept_is_406_json(http: httpx.AsyncClient, accept: str) -> None:
    response = await post_json(http, {"query": "{ __typename }"}, accept=accept)
    assert response.status_code == 406
    json_errors(response)


async def test_browsers_still_get_graphiql(http: httpx.AsyncClient) -> None:
    response = await http.get(
        "/graphql", headers={"accept": "text/html,application/xhtml+xml;q=0.9"}
    )
    assert response.status_code == 200
    assert media_type(response) == "text/html"


# ---- request parameters -----------------------------------------------------------------


@pytest.mark.parametrize("accept", BOTH)
@pytest.mark.parametrize(
    "payload",
    [
        {"query": "{ __typename }", "variables": None},
        {"query": "{ __typename }", "operationName": None},
        {"query": "{ __typename }", "extensions": None},
        {"query": "{ __typename }", "variables": {}},
        {"query": "{ __typename }", "extensions": {"some": "value"}},
        {"query": "query Named { __typename }", "operationName": "Named"},
        {"query": "query($k: Boolean!) { __typename @include(if: $k) }", "variables": {"k": True}},
    ],
)
async def test_well_formed_parameters_are_accepted(
    http: httpx.AsyncClient, accept: str, payload: dict[str, Any]
) -> None:
    response = await post_json(http, payload, accept=accept)
    assert response.status_code == 200, response.text
    assert media_type(response) == accept
    assert response.json()["data"] == {"__typename": "Query"}


MALFORMED_BODIES: list[Any] = [
    {},
    {"variables": {}},
    {"query": None},
    {"query": ""},
    {"query": 1},
    {"query": True},
    {"query": {}},
    {"query": ["{ __typename }"]},
    {"query": "{ __typename }", "variables": "{}"},
    {"query": "{ __typename }", "variables": 1},
    {"query": "{ __typename }", "variables": True},
    {"query": "{ __typename }", "variables": []},
    {"query": "{ __typename }", "operationName": 1},
    {"query": "{ __typename }", "operationName": True},
    {"query": "{ __typename }", "operationName": {}},
    {"query": "{ __typename }", "operationName": []},
    {"query": "{ __typename }", "extensions": "{}"},
    {"query": "{ __typename }", "extensions": 1},
    {"query": "{ __typename }", "extensions": True},
    {"query": "{ __typename }", "extensions": []},
    {"query": "query A { __typename }", "operationName": "B"},
    "{ __typename }",
    None,
    42,
    [],
    [{"query": "{ __typename }"}, {"query": "{ __typename }"}],
    ["{ __typename }"],
]


@pytest.mark.parametrize("accept", BOTH)
@pytest.mark.parametrize("payload", MALFORMED_BODIES, ids=lambda p: json.dumps(p)[:40])
async def test_malformed_request_is_400_with_errors(
    http: httpx.AsyncClient, accept: str, payload: object
) -> None:
    response = await post_json(http, payload, accept=accept)
    assert response.status_code == 400, response.text
    json_errors(response, expected_media=accept)
    assert "data" not in response.json()


@pytest.mark.parametrize("accept", BOTH)
@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b'{"query": "{ __typename }"', b"not json", b"\xff\xfe", b"[" * 100_000],
    ids=["empty", "brace", "truncated", "text", "bad-utf8", "deeply-nested"],
)
async def test_unparsable_json_is_400_with_errors(
    http: httpx.AsyncClient, accept: str, raw: bytes
) -> None:
    response = await http.post(
        "/graphql", content=raw, headers={"content-type": APPLICATION_JSON, "accept": accept}
    )
    assert response.status_code == 400, response.text
    json_errors(response, expected_media=accept)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/graphql",
        "multipart/form-data; boundary=x",
    ],
)
async def test_post_that_is_not_json_is_415(
    http: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"accept": APPLICATION_JSON}
    if content_type is not None:
        headers["content-type"] = content_type
    response = await http.post("/graphql", content=b'{"query": "{ __typename }"}', headers=headers)
    assert response.status_code == 415, response.text
    json_errors(response)


# ---- status codes per media type -------------------------------------------------------

REFUSED_BEFORE_EXECUTION = {
    "parse": {"query": "{"},
    "validation": {"query": "{ doesNotExist }"},
    "coercion": {
        "query": "query($e: Boolean!) { __typename @skip(if: $e) }",
        "variables": {"e": "yes"},
    },
    "missing-variable": {"query": "query($e: Boolean!) { __typename @skip(if: $e) }"},
    "unused-variable": {"query": "query($e: String) { __typename }"},
}


@pytest.mark.parametrize("case", sorted(REFUSED_BEFORE_EXECUTION))
async def test_refused_before_execution_is_200_under_application_json(
    http: httpx.AsyncClient, case: str
) -> None:
    response = await post_json(http, REFUSED_BEFORE_EXECUTION[case], accept=APPLICATION_JSON)
    assert response.status_code == 200
    errors = json_errors(response)
    assert "data" not in response.json()
    assert {error["extensions"]["code"] for error in errors} == {"BAD_USER_INPUT"}


@pytest.mark.parametrize("case", sorted(REFUSED_BEFORE_EXECUTION))
async def test_refused_before_execution_is_400_under_graphql_response_json(
    http: httpx.AsyncClient, case: str
) -> None:
    response = await post_json(http, REFUSED_BEFORE_EXECUTION[case], accept=GRAPHQL_RESPONSE_JSON)
    assert response.status_code == 400
    json_errors(response, expected_media=GRAPHQL_RESPONSE_JSON)
    assert "data" not in response.json()


@pytest.mark.parametrize("accept", BOTH)
async def test_execution_error_is_200_with_data(http: httpx.AsyncClient, accept: str) -> None:
    response = await post_json(http, {"query": "{ me { id } }"}, accept=accept)
    assert response.status_code == 200
    errors = json_errors(response, expected_media=accept)
    assert response.json()["data"] is None
    assert errors[0]["path"] == ["me"]
    assert errors[0]["extensions"]["code"] == "UNAUTHENTICATED"


# ---- GET ---------------------------------------------------------------------------------


@pytest.mark.parametrize("accept", BOTH)
async def test_get_query_with_url_encoded_variables(http: httpx.AsyncClient, accept: str) -> None:
    params = {
        "query": "query($k: Boolean!) { __typename @include(if: $k) }",
        "variables": json.dumps({"k": True}),
    }
    response = await http.get(f"/graphql?{urlencode(params)}", headers={"accept": accept})
    assert response.status_code == 200
    assert media_type(response) == accept
    assert response.json()["data"] == {"__typename": "Query"}


@pytest.mark.parametrize("accept", BOTH)
@pytest.mark.parametrize(
    "params",
    [
        {"query": "{ __typename }", "variables": "{not json"},
        {"query": "{ __typename }", "variables": "[]"},
        {"query": "{ __typename }", "extensions": "1"},
        {"variables": "{}"},
    ],
)
async def test_malformed_get_is_400(
    http: httpx.AsyncClient, accept: str, params: dict[str, str]
) -> None:
    response = await http.get(f"/graphql?{urlencode(params)}", headers={"accept": accept})
    assert response.status_code == 400, response.text
    json_errors(response, expected_media=accept)


@pytest.mark.parametrize("accept", BOTH)
async def test_mutation_over_get_is_405(http: httpx.AsyncClient, accept: str) -> None:
    query = 'mutation { register(email: "get@example.com", password: "x") { accessToken } }'
    response = await http.get(f"/graphql?{urlencode({'query': query})}", headers={"accept": accept})
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    json_errors(response, expected_media=accept)


async def test_subscription_over_http_is_refused(http: httpx.AsyncClient) -> None:
    response = await post_json(
        http, {"query": 'subscription { calculationUpdates(id: "1") { id } }'}
    )
    assert response.status_code == 400
    [error] = json_errors(response)
    assert "WebSocket" in error["message"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
async def test_view_refuses_other_methods_with_json_405(
    app_and_http: tuple[Any, httpx.AsyncClient], method: str
) -> None:
    """The view itself; the app's route answers these before the view (see the next test)."""
    app, _ = app_and_http
    transport = httpx.ASGITransport(app=app.state.graphql)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as view:
        response = await view.request(
            method, "/graphql", content=b"{}", headers={"content-type": APPLICATION_JSON}
        )
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    json_errors(response)


async def test_app_refuses_other_methods_with_json_405(http: httpx.AsyncClient) -> None:
    response = await http.put("/graphql", content=b"{}", headers={"content-type": APPLICATION_JSON})
    assert response.status_code == 405
    json_errors(response)


# ---- size and faults -------------------------------------------------------------------


async def test_declared_oversized_body_is_413(http: httpx.AsyncClient) -> None:
    body = json.dumps({"query": "{ __typename }" + " " * 300_000}).encode()
    response = await http.post("/graphql", content=body, headers={"content-type": APPLICATION_JSON})
    assert response.status_code == 413
    json_errors(response)


async def test_streamed_oversized_body_is_413(http: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"query": "{ __typename }'
        for _ in range(40):
            yield b" " * 10_000
        yield b'"}'

    response = await http.post(
        "/graphql", content=chunks(), headers={"content-type": APPLICATION_JSON}
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    json_errors(response)


async def test_fault_in_the_view_is_a_masked_json_500(
    app_and_http: tuple[Any, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, http = app_and_http
    tokens = app.state.graphql.services.tokens

    def explode(_token: str) -> None:
        raise RuntimeError("key file /etc/crunchql/secret.pem unreadable")

    monkeypatch.setattr(tokens, "decode_access_token", explode)
    response = await http.post(
        "/graphql",
        json={"query": "{ me { id } }"},
        headers={"authorization": "Bearer abc", "accept": GRAPHQL_RESPONSE_JSON},
    )
    assert response.status_code == 500
    [error] = json_errors(response, expected_media=GRAPHQL_RESPONSE_JSON)
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    assert error["message"] == "Internal server error."
    assert "secret.pem" not in response.text and "Traceback" not in response.text


# ---- the graphql-http audit itself, when node and the package are at hand ------------------

AUDIT_SCRIPT = """
const { auditServer } = require('graphql-http');
auditServer({ url: process.argv[2] }).then(async (results) => {
  const out = [];
  for (const r of results) {
    const entry = { id: r.id, name: r.name, status: r.status };
    if (r.status !== 'ok') {
      entry.reason = r.reason;
      if (r.response) entry.body = await r.response.text();
    }
    out.push(entry);
  }
  console.log(JSON.stringify(out));
});
"""


def _graphql_http_modules() -> Path | None:
    candidates = [os.environ.get("GRAPHQL_HTTP_NODE_MODULES", ""), "/tmp/audit/node_modules"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "graphql-http" / "package.json").is_file():
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_graphql_http_audit(sqlite_url: str, tmp_path: Path) -> None:
    node = shutil.which("node")
    modules = _graphql_http_modules()
    if node is None or modules is None:
        pytest.skip(
            "node or the graphql-http package is missing "
            "(npm install graphql-http graphql; GRAPHQL_HTTP_NODE_MODULES=<its node_modules>)"
        )
    import uvicorn

    from crunchql.app.factory import create_app

    port = _free_port()
    app = create_app(make_settings(database_url=sqlite_url), configure_logs=False)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, ws="none", log_config=None, lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.05)
        assert server.started
        script = tmp_path / "audit.cjs"
        script.write_text(AUDIT_SCRIPT)
        process = await asyncio.create_subprocess_exec(
            node,
            str(script),
            f"http://127.0.0.1:{port}/graphql",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NODE_PATH": str(modules)},
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
        assert process.returncode == 0, stderr.decode()
    finally:
        server.should_exit = True
        await serving
    results = json.loads(stdout)
    assert len(results) >= 61
    failing = [result for result in results if result["status"] != "ok"]
    assert failing == [], json.dumps(failing, indent=2)
