"""The findings of the abuse review (issue 9), each reproduced against the app: a
response budget, input that cannot crash a request, no schema leaks, security headers."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from crunchql.core.settings import Environment, Settings
from crunchql.db.engine import unit_of_work
from crunchql.db.models import Calculation, CalculationStatus
from crunchql.services import calculations
from tests.conftest import GraphQLClient, error_codes, make_settings, running_app

PNG_BYTES = 4 * 1024 * 1024
PNG_FIELDS = "result { ... on MandelbrotResult { png } }"


async def store_mandelbrot(app: Any, owner_id: str, png_size: int = PNG_BYTES) -> str:
    """A finished Mandelbrot calculation holding a ``png_size``-character image."""
    services = app.state.runtime.services
    row = Calculation(
        id=uuid.uuid4(),
        owner_id=uuid.UUID(owner_id),
        kind="mandelbrot",
        input={"width": 4096, "height": 4096, "maxIterations": 1000},
        status=CalculationStatus.SUCCEEDED.value,
        progress=1.0,
        result={"width": 4096, "height": 4096, "insideFraction": 0.2, "png": "A" * png_size},
        created_at=datetime.now(UTC),
        finished_at=datetime.now(UTC),
        attempts=1,
        version=2,
    )
    async with unit_of_work(services.session_factory) as session:
        session.add(row)
    return str(row.id)


@pytest.fixture
async def app_with_png(
    empty_sqlite_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[GraphQLClient, str]]:
    overrides = getattr(request, "param", {})
    async with running_app(make_settings(database_url=empty_sqlite_url, **overrides)) as (
        app,
        client,
    ):
        payload = await client.register()
        client.token = payload["accessToken"]
        yield client, await store_mandelbrot(app, payload["user"]["id"])


def _thirty_png_aliases() -> str:
    aliases = " ".join(f"a{i}: calculation(id: $id) {{ ...P }}" for i in range(30))
    return f"query($id: ID!) {{ {aliases} }} fragment P on Calculation {{ {PNG_FIELDS} }}"


async def test_thirty_png_aliases_are_refused_before_execution(
    app_with_png: tuple[GraphQLClient, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finding: a 1 KB request produced a 126 MB response (30 aliases of a 4 MiB png),
    written with a fragment to stay under the token limit."""
    client, calculation_id = app_with_png
    reads = 0
    original = calculations.get_visible

    async def counting(*args: Any) -> Any:
        nonlocal reads
        reads += 1
        return await original(*args)

    monkeypatch.setattr(calculations, "get_visible", counting)
    query = _thirty_png_aliases()
    assert len(query.encode()) < 2048
    response = await client.post(query, {"id": calculation_id})
    body = response.json()
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert "costs" in body["errors"][0]["message"]
    assert "data" not in body
    assert reads == 0  # nothing was read, let alone encoded
    assert len(response.content) < 4096
    assert body["extensions"]["cost"]["requested"] > body["extensions"]["cost"]["maximum"]


async def test_one_png_still_reads_fine(app_with_png: tuple[GraphQLClient, str]) -> None:
    client, calculation_id = app_with_png
    body = await client.execute(
        f"query($id: ID!) {{ calculation(id: $id) {{ id {PNG_FIELDS} }} }}", {"id": calculation_id}
    )
    assert "errors" not in body
    assert len(body["data"]["calculation"]["result"]["png"]) == PNG_BYTES
    cost = body["extensions"]["cost"]
    assert 2000 < cost["requested"] <= cost["maximum"]


async def test_page_size_counts_in_the_cost(app_with_png: tuple[GraphQLClient, str]) -> None:
    client, _ = app_with_png
    listing = "query($n: Int) {{ calculations(first: $n) {{ edges {{ node {{ id {} }} }} }} }}"
    big = await client.execute(listing.format(PNG_FIELDS), {"n": 100})
    assert error_codes(big) == ["BAD_USER_INPUT"]
    small = await client.execute(listing.format(PNG_FIELDS), {"n": 1})
    assert "errors" not in small
    plain = await client.execute(listing.format("status"), {"n": 100})
    assert "errors" not in plain
    assert plain["extensions"]["cost"]["requested"] >= 100 * 3


@pytest.mark.parametrize("app_with_png", [{"max_response_bytes": 1024 * 1024}], indirect=True)
async def test_response_over_the_byte_cap_fails_clearly(
    app_with_png: tuple[GraphQLClient, str],
) -> None:
    client, calculation_id = app_with_png
    response = await client.post(
        f"query($id: ID!) {{ calculation(id: $id) {{ {PNG_FIELDS} }} }}", {"id": calculation_id}
    )
    assert response.status_code == 200
    body = response.json()
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert "larger than 1048576 bytes" in body["errors"][0]["message"]
    assert body["data"] is None
    assert len(response.content) < 4096


# ---- input that cannot crash a request ------------------------------------------------------

LOGIN = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }"
LITERAL_NUL = 'mutation { login(email: "x\\u0000@example.com", password: "p") { accessToken } }'
BY_ID = "query($id: ID!) { calculation(id: $id) { id } }"
PAGE = "query($a: String) { calculations(after: $a) { pageInfo { hasNextPage } } }"
REFRESH = "mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken } }"


@pytest.mark.parametrize(
    ("query", "variables", "field"),
    [
        (LOGIN, {"e": "nul\x00@example.com", "p": "whatever"}, "email"),
        (LOGIN, {"e": "a@example.com", "p": "pass\x00word"}, "password"),
        (LOGIN, {"e": "lone\ud800@example.com", "p": "whatever"}, "email"),
        (LITERAL_NUL, {}, "email"),
        (BY_ID, {"id": "\x00"}, "id"),
        (PAGE, {"a": "\x00"}, "after"),
        (REFRESH, {"t": "\udfff"}, "refreshToken"),
    ],
)  # fmt: skip
async def test_nul_and_lone_surrogates_are_bad_user_input(
    client: GraphQLClient, query: str, variables: dict[str, Any], field: str
) -> None:
    """The finding: a NUL in login(email:) reached PostgreSQL and came back as
    INTERNAL_SERVER_ERROR."""
    payload = await client.register()
    client.token = payload["accessToken"]
    body = json.dumps({"query": query, "variables": variables}).encode()
    response = await client.http.post(
        "/graphql",
        content=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {client.token}"},
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert error_codes(answer) == ["BAD_USER_INPUT"], answer
    assert answer["errors"][0]["extensions"]["field"] == field


def _cursor(created: str) -> str:
    return base64.urlsafe_b64encode(f"{created}|{uuid.uuid4()}".encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor("0001-01-01T00:00:00+05:00"),  # before year 1 in UTC
        _cursor("9999-12-31T23:59:59-05:00"),  # after year 9999 in UTC
        _cursor("2026-02-30T00:00:00+00:00"),
        base64.urlsafe_b64encode(b"\xff\xfe|x").decode(),
        "not base64 at all!",
        "",
    ],
)
async def test_any_bad_cursor_is_bad_user_input(client: GraphQLClient, cursor: str) -> None:
    """The finding: a cursor holding an out-of-range date was INTERNAL_SERVER_ERROR."""
    client.token = (await client.register())["accessToken"]
    body = await client.execute(PAGE, {"a": cursor})
    if cursor == "":
        assert "errors" not in body  # no cursor: the first page
    else:
        assert error_codes(body) == ["BAD_USER_INPUT"], body
        assert body["errors"][0]["extensions"]["field"] == "after"


SUBMIT_PRIMES = (
    "mutation($n: BigInt!) { submitCalculation(input: {primeCount: {limit: $n}}) { id } }"
)


SUBMIT_LITERAL = "mutation { submitCalculation(input: {primeCount: {limit: %s}}) { id } }"


def _longest_echo(message: str, sent: str) -> int:
    """The longest run of ``sent`` repeated in ``message``."""
    return max((len(m) for m in re.findall(f"[{re.escape(sent[0])}]+", message)), default=0)


@pytest.mark.parametrize(
    "value", ["\u0661\u0662\u0663", "\uff11\uff12", "12\u0663", "+-1", "1e3", " 12"]
)
async def test_big_int_takes_only_ascii_digits(client: GraphQLClient, value: str) -> None:
    client.token = (await client.register())["accessToken"]
    body = await client.execute(SUBMIT_PRIMES, {"n": value})
    assert error_codes(body) == ["BAD_USER_INPUT"]


async def test_big_int_accepts_a_sign(client: GraphQLClient) -> None:
    client.token = (await client.register())["accessToken"]
    body = await client.execute(SUBMIT_PRIMES, {"n": "+1000"})
    assert "errors" not in body, body


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        (SUBMIT_PRIMES, {"n": "7" * 5000}),
        (SUBMIT_LITERAL % ("7" * 5000), {}),
        (SUBMIT_LITERAL % ('"' + "7" * 5000 + '"'), {}),
        ("{ calculations(status: %s) { pageInfo { hasNextPage } } }" % ("Q" * 5000), {}),
    ],
)  # fmt: skip
async def test_no_error_repeats_more_than_100_characters_of_input(
    client: GraphQLClient, query: str, variables: dict[str, Any]
) -> None:
    """The finding: BigInt echoed a 5,000-digit value back in its error."""
    client.token = (await client.register())["accessToken"]
    response = await client.post(query, variables)
    assert response.status_code in (200, 400)
    body = response.json()
    assert error_codes(body) and set(error_codes(body)) == {"BAD_USER_INPUT"}
    for error in body["errors"]:
        assert (
            _longest_echo(error["message"], "7" if "7" * 10 in query + str(variables) else "Q")
            <= 100
        )


# ---- no schema leaks without introspection --------------------------------------------------

LEAKY = [
    "{ calculationKind }",  # a field
    "{ calculations(statu: QUEUED) { pageInfo { hasNextPage } } }",  # an argument
    "{ calculations(status: QUEUD) { pageInfo { hasNextPage } } }",  # an enum value
    '{ calculation(id: "x") { ... on Calculaton { id } } }',  # a type
    "query($s: CalculationStatu) { calculations(status: $s) { pageInfo { hasNextPage } } }",
    "{ me @skp(if: true) { id } }",  # a directive
    "mutation { submitCalculation(input: {primeCont: {limit: 5}}) { id } }",  # an input field
]


@pytest.fixture(scope="module")
async def closed_http(sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(make_settings(database_url=sqlite_url, introspection=False)) as (
        _app,
        graphql,
    ):
        yield graphql.http


@pytest.mark.parametrize("query", LEAKY)
async def test_no_did_you_mean_of_any_kind_without_introspection(
    closed_http: httpx.AsyncClient, query: str
) -> None:
    """The finding: with introspection off, "Did you mean" still named types, arguments
    and enum values."""
    response = await closed_http.post("/graphql", json={"query": query})
    body = response.json()
    assert body["errors"]
    assert "Did you mean" not in response.text, body


async def test_a_variable_with_a_wrong_enum_value_suggests_nothing(
    closed_http: httpx.AsyncClient,
) -> None:
    response = await closed_http.post(
        "/graphql",
        json={
            "query": "query($s: CalculationStatus) { calculations(status: $s) { __typename } }",
            "variables": {"s": "QUEUD"},
        },
    )
    assert error_codes(response.json()) == ["BAD_USER_INPUT"]
    assert "Did you mean" not in response.text


async def test_development_still_suggests(sqlite_url: str) -> None:
    async with running_app(make_settings(database_url=sqlite_url)) as (_app, graphql):
        response = await graphql.http.post("/graphql", json={"query": LEAKY[2]})
    assert "Did you mean" in response.text


# ---- production defaults: GraphiQL off, security headers -------------------------------------


def production(database_url: str, **overrides: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        environment=Environment.PRODUCTION,
        jwt_secret="x" * 48,
        database_url=database_url,
        **overrides,
    )


@pytest.mark.postgres
async def test_graphiql_is_off_in_production_unless_asked_for(postgres_url: str) -> None:
    browser = {"Accept": "text/html"}
    async with running_app(production(postgres_url)) as (_app, graphql):
        page = await graphql.http.get("/graphql", headers=browser)
        assert "text/html" not in page.headers.get("content-type", "")
        assert (await graphql.http.get("/graphiql-assets/graphiql.min.js")).status_code == 404
    async with running_app(production(postgres_url, graphiql=True)) as (_app, graphql):
        page = await graphql.http.get("/graphql", headers=browser)
        assert page.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert "script-src 'self' 'sha256-" in page.headers["content-security-policy"]


JSON_BODY = {"Content-Type": "application/json"}


async def test_security_headers_on_every_response(sqlite_url: str) -> None:
    """The finding: no security headers unless nginx added them (and the Kubernetes
    manifests have no nginx)."""
    async with running_app(make_settings(database_url=sqlite_url)) as (_app, graphql):
        answers = [
            await graphql.http.post("/graphql", json={"query": "{ __typename }"}),
            await graphql.http.post("/graphql", content=b"{", headers=JSON_BODY),
            await graphql.http.get("/healthz"),
        ]  # fmt: skip
        page = await graphql.http.get("/graphql", headers={"Accept": "text/html"})
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        assert "default-src 'none'" in answer.headers["content-security-policy"]
        assert "strict-transport-security" not in answer.headers
    # The GraphiQL page keeps its own (strict, hash-pinned) policy.
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"


async def test_hsts_when_configured(sqlite_url: str) -> None:
    settings = make_settings(database_url=sqlite_url, hsts_seconds=31536000)
    async with running_app(settings) as (_app, graphql):
        answer = await graphql.http.get("/healthz")
    assert answer.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
