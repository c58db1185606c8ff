"""A graphql-cop style audit: the checks graphql-cop runs against an endpoint, written
as assertions on the app driven in-process."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from graphql import get_introspection_query

from crunchql.core.settings import Environment, Settings
from crunchql.schema.root import SchemaOptions, build_schema
from tests.conftest import make_settings, running_app

STANDARD_INTROSPECTION = get_introspection_query(descriptions=True, input_value_deprecation=True)
SCHEMA_PROBE = "query cop { __schema { types { name fields { name } } } }"
LEAK_MARKERS = ("traceback", "stacktrace", "exception", 'file "', ".py", "tracing")


def deep_type_query(depth: int) -> str:
    """``__type { fields { type { ofType { ... name } } } }``, ``depth`` fields deep."""
    inner = "name"
    for _ in range(depth - 4):
        inner = f"ofType {{ {inner} }}"
    return f'{{ __type(name: "Query") {{ fields {{ type {{ {inner} }} }} }} }}'


def circular_introspection(depth: int) -> str:
    """graphql-cop's circular introspection: types/fields/type/fields/... ``depth`` deep."""
    inner = "name"
    for level in range(depth - 2):
        inner = f"{'fields' if level % 2 == 0 else 'type'} {{ {inner} }}"
    return f"query cop {{ __schema {{ types {{ {inner} }} }} }}"


async def post(http: httpx.AsyncClient, query: str, **kw: Any) -> httpx.Response:
    return await http.post("/graphql", json={"query": query}, **kw)


def refused(response: httpx.Response, fragment: str = "") -> dict[str, Any]:
    """Refused before execution: no data, one coded error, no leak."""
    assert response.status_code in (200, 400), response.text
    body: dict[str, Any] = response.json()
    assert "data" not in body or body["data"] is None, body
    assert body["errors"], body
    assert {error["extensions"]["code"] for error in body["errors"]} == {"BAD_USER_INPUT"}
    assert fragment in body["errors"][0]["message"], body
    assert_no_leak(response)
    return body


def assert_no_leak(response: httpx.Response) -> None:
    text = response.text.lower()
    for marker in LEAK_MARKERS:
        assert marker not in text, f"{marker!r} in {response.text[:500]}"
    assert "tracing" not in (response.json().get("extensions") or {})


@pytest.fixture(scope="module")
async def dev(sqlite_url: str) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    async with running_app(make_settings(database_url=sqlite_url)) as (app, graphql):
        yield app, graphql.http


@pytest.fixture
def http(dev: tuple[Any, httpx.AsyncClient]) -> httpx.AsyncClient:
    return dev[1]


@pytest.fixture(scope="module")
async def closed(sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """Introspection switched off (CRUNCHQL_INTROSPECTION=false)."""
    async with running_app(make_settings(database_url=sqlite_url, introspection=False)) as (
        _app,
        graphql,
    ):
        yield graphql.http


# ---- introspection and field suggestions ----------------------------------------------------


async def test_introspection_is_on_in_development(http: httpx.AsyncClient) -> None:
    response = await post(http, STANDARD_INTROSPECTION)
    assert response.status_code == 200
    body = response.json()
    assert "errors" not in body, body["errors"]
    names = {t["name"] for t in body["data"]["__schema"]["types"]}
    assert {"Query", "Mutation", "Calculation"} <= names


@pytest.mark.parametrize(
    "query",
    [
        SCHEMA_PROBE,
        STANDARD_INTROSPECTION,
        '{ __type(name: "Query") { fields { name } } }',
        "query { a: __schema { queryType { name } } }",
        "fragment F on Query { __schema { types { name } } } query { ...F }",
    ],
    ids=["schema", "standard", "type", "aliased", "fragment"],
)
async def test_introspection_off_when_disabled(closed: httpx.AsyncClient, query: str) -> None:
    body = refused(await post(closed, query), "introspection")
    assert "__schema" not in json.dumps(body.get("data"))


async def test_typename_still_answers_without_introspection(closed: httpx.AsyncClient) -> None:
    response = await post(closed, "{ __typename }")
    assert response.json()["data"] == {"__typename": "Query"}


def test_introspection_defaults_follow_the_environment() -> None:
    production = Settings(  # type: ignore[call-arg]
        _env_file=None,
        environment=Environment.PRODUCTION,
        jwt_secret="x" * 48,
        database_url="postgresql://crunch:pw@db.internal:5432/crunchql",
    )
    assert production.introspection_enabled is False
    assert make_settings().introspection_enabled is True
    assert make_settings(introspection=False).introspection_enabled is False


@pytest.mark.postgres
async def test_production_app_has_no_introspection_and_no_suggestions(postgres_url: str) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        environment=Environment.PRODUCTION,
        jwt_secret="x" * 48,
        database_url=postgres_url,
    )
    async with running_app(settings) as (_app, graphql):
        refused(await post(graphql.http, SCHEMA_PROBE), "introspection")
        body = refused(await post(graphql.http, "{ calculationKind }"))
        assert "Did you mean" not in json.dumps(body)


async def test_suggestions_off_in_the_schema_option() -> None:
    quiet = build_schema(SchemaOptions(field_suggestions=False))
    result = await quiet.execute("{ calculationKind me { emial } }")
    assert result.errors
    assert not any("Did you mean" in error.message for error in result.errors)
    chatty = build_schema(SchemaOptions(field_suggestions=True))
    result = await chatty.execute("{ calculationKind }")
    assert result.errors and "Did you mean" in result.errors[0].message


async def test_no_suggestions_when_introspection_is_off(closed: httpx.AsyncClient) -> None:
    body = refused(await post(closed, "{ calculationKind }"))
    assert "Did you mean" not in json.dumps(body)


# ---- overloading, batching, CSRF ------------------------------------------------------------


async def test_directive_overloading_gives_one_error(http: httpx.AsyncClient) -> None:
    body = refused(await post(http, "query cop { __typename @aa@aa@aa@aa@aa@aa@aa@aa@aa@aa }"))
    assert len(body["errors"]) == 1


async def test_repeated_known_directive_gives_one_error(http: httpx.AsyncClient) -> None:
    body = refused(await post(http, "query { __typename " + "@skip(if: false)" * 40 + " }"))
    assert len(body["errors"]) == 1


async def test_distinct_validation_errors_are_capped(http: httpx.AsyncClient) -> None:
    fields = " ".join(f"nope{i}" for i in range(40))
    body = refused(await post(http, f"{{ {fields} }}"))
    assert len(body["errors"]) <= 10


async def test_alias_overloading_is_refused(http: httpx.AsyncClient) -> None:
    aliases = " ".join(f"a{i}: __typename" for i in range(101))
    refused(await post(http, f"query cop {{ {aliases} }}"), "aliases")


async def test_fifty_aliases_are_admitted(http: httpx.AsyncClient) -> None:
    aliases = " ".join(f"a{i}: __typename" for i in range(50))
    body = (await post(http, f"{{ {aliases} }}")).json()
    assert "errors" not in body and len(body["data"]) == 50


@pytest.mark.parametrize("size", [2, 10, 100])
async def test_array_batching_is_refused_with_json(http: httpx.AsyncClient, size: int) -> None:
    response = await http.post("/graphql", json=[{"query": "query cop { __typename }"}] * size)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict) and body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_mutation_over_get_is_refused_and_not_run(http: httpx.AsyncClient) -> None:
    email = f"csrf-{uuid.uuid4().hex[:8]}@example.com"
    mutation = (
        f'mutation {{ register(email: "{email}", password: "correct horse battery") '
        "{ accessToken } }"
    )
    response = await http.get(f"/graphql?{urlencode({'query': mutation})}")
    assert response.status_code == 405
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    # Not executed: the same registration over POST still succeeds.
    body = (await post(http, mutation)).json()
    assert "errors" not in body, body


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data"]
)
async def test_form_posts_are_refused(http: httpx.AsyncClient, content_type: str) -> None:
    """Content types a cross-site form can send without a preflight are refused."""
    response = await http.post(
        "/graphql",
        content=b'{"query": "mutation { __typename }"}',
        headers={"content-type": content_type},
    )
    assert response.status_code == 415
    assert response.json()["errors"]


# ---- depth and tokens -------------------------------------------------------------------------


async def test_deep_introspection_is_refused(http: httpx.AsyncClient) -> None:
    refused(await post(http, deep_type_query(20)), "20 levels deep")
    refused(await post(http, deep_type_query(16)), "the limit is 15")


async def test_circular_introspection_is_refused(http: httpx.AsyncClient) -> None:
    refused(await post(http, circular_introspection(20)), "levels deep")


async def test_depth_at_the_limit_is_admitted(http: httpx.AsyncClient) -> None:
    body = (await post(http, deep_type_query(15))).json()
    assert "errors" not in body and body["data"]["__type"]["fields"]


async def test_depth_through_fragments_is_counted(http: httpx.AsyncClient) -> None:
    inner = "name"
    for _ in range(8):
        inner = f"ofType {{ {inner} }}"
    query = (
        f"fragment T on __Type {{ {inner} }} "
        f'{{ __type(name: "Query") {{ fields {{ type {{ ofType {{ ofType {{ ofType {{ '
        f"ofType {{ ...T }} }} }} }} }} }} }} }}"
    )
    refused(await post(http, query), "levels deep")


@pytest.fixture(scope="module")
async def token_limited(sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(make_settings(database_url=sqlite_url, max_tokens=450)) as (
        _app,
        graphql,
    ):
        yield graphql.http


async def test_field_duplication_is_refused(token_limited: httpx.AsyncClient) -> None:
    refused(await post(token_limited, "query cop { " + "__typename " * 500 + "}"), "tokens")


async def test_standard_introspection_fits_the_token_limit(
    token_limited: httpx.AsyncClient,
) -> None:
    body = (await post(token_limited, STANDARD_INTROSPECTION)).json()
    assert "errors" not in body and body["data"]["__schema"]


async def test_default_token_limit_refuses_field_duplication(http: httpx.AsyncClient) -> None:
    refused(await post(http, "query cop { " + "__typename " * 500 + "}"), "tokens")


# ---- leaks and masking -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["query cop { __typename {}", "{", "query cop { me { id } ", "{ calculation(id: 1) { id }"],
)
async def test_syntax_errors_do_not_leak(http: httpx.AsyncClient, query: str) -> None:
    refused(await post(http, query), "Syntax Error")


async def test_no_trace_or_debug_extensions(http: httpx.AsyncClient) -> None:
    for query in ("{ __typename }", "{ me { id } }", "{ nope }"):
        response = await post(http, query)
        assert_no_leak(response)
        body = response.json()
        assert set(body) <= {"data", "errors", "extensions"}
        assert set(body.get("extensions", {})) <= {"cost"}  # the operation's cost, nothing else


async def test_unexpected_resolver_error_is_masked(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crunchql.services import users

    async def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError('File "/srv/crunchql/db.py", line 3: password=hunter2')

    monkeypatch.setattr(users, "register", explode)
    response = await post(
        http, 'mutation { register(email: "m@example.com", password: "x") { accessToken } }'
    )
    assert response.status_code == 200
    body = response.json()
    [error] = body["errors"]
    assert error["message"] == "Internal server error."
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    assert error["extensions"]["requestId"]
    assert "hunter2" not in response.text
    assert_no_leak(response)


async def test_every_error_carries_a_contract_code(http: httpx.AsyncClient) -> None:
    for query in ("{", "{ nope }", "{ me { id } }", "query($x: Int!) { __typename }"):
        body = (await post(http, query)).json()
        assert body["errors"], body
        for error in body["errors"]:
            assert error["extensions"]["code"] in {
                "UNAUTHENTICATED",
                "BAD_USER_INPUT",
                "INTERNAL_SERVER_ERROR",
            }, error
