"""Calculations through the ASGI app: the embedded runner on SQLite and PostgreSQL,
and the Redis-queue path with no worker running (so jobs stay QUEUED)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from crunchql.core.lifecycle import RunOutcome
from crunchql.db.engine import create_engine, create_session_factory
from crunchql.pubsub.bus import InProcessEventBus
from crunchql.services.container import RunnerServices
from crunchql.workers.runner import RunnerConfig, run_calculation
from tests.conftest import (
    GraphQLClient,
    error_codes,
    flush_redis,
    make_settings,
    running_app,
    truncate,
    wait_for,
)

SUBMIT = "mutation($i: CalculationInput!) { submitCalculation(input: $i) { id status kind input } }"
GET = """query($id: ID!) { calculation(id: $id) { id status progress error attempts
  result { ... on MonteCarloPiResult { estimate standardError samples } } owner { email } } }"""
PAGE = """query($first: Int, $after: String, $status: CalculationStatus) {
  calculations(first: $first, after: $after, status: $status) {
    edges { cursor node { id status } } pageInfo { hasNextPage endCursor } } }"""


async def submit(client: GraphQLClient, calculation_input: dict[str, Any]) -> dict[str, Any]:
    body = await client.execute(SUBMIT, {"i": calculation_input})
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["submitCalculation"]
    return result


async def status_of(client: GraphQLClient, calculation_id: str) -> dict[str, Any]:
    body = await client.execute(GET, {"id": calculation_id})
    result: dict[str, Any] = body["data"]["calculation"]
    return result


async def test_embedded_runner_finishes_a_calculation(client: GraphQLClient) -> None:
    registered = await client.register()
    client.token = registered["accessToken"]
    submitted = await submit(client, {"monteCarloPi": {"samples": "2000000"}})
    assert submitted["kind"] == "monteCarloPi"
    seed = submitted["input"]["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**31  # drawn and stored

    async def finished() -> dict[str, Any] | None:
        calc = await status_of(client, submitted["id"])
        return calc if calc["status"] == "SUCCEEDED" else None

    calc = await wait_for(finished, timeout=60)
    assert calc["progress"] == 1.0 and calc["attempts"] == 1
    assert calc["owner"]["email"] == registered["user"]["email"]
    result = calc["result"]
    assert result["samples"] == 2_000_000
    assert abs(result["estimate"] - 3.141592653589793) < 5 * result["standardError"]


async def test_kinds_are_listed_with_descriptions(client: GraphQLClient) -> None:
    body = await client.execute("{ calculationKinds { name description } }")
    kinds = {kind["name"]: kind["description"] for kind in body["data"]["calculationKinds"]}
    assert {"monteCarloPi", "optionPricing", "primeCount", "mandelbrot", "nBody"} <= set(kinds)
    assert all(len(description) > 10 for description in kinds.values())


@pytest.mark.parametrize(
    ("calculation_input", "field"),
    [
        ({"monteCarloPi": {"samples": 0}}, "monteCarloPi.samples"),
        ({"monteCarloPi": {"samples": "10000000001"}}, "monteCarloPi.samples"),
        ({"monteCarloPi": {"samples": 10, "seed": -1}}, "monteCarloPi.seed"),
    ],
)
async def test_out_of_bounds_input_is_refused_and_not_stored(
    client: GraphQLClient, calculation_input: dict[str, Any], field: str
) -> None:
    client.token = (await client.register())["accessToken"]
    body = await client.execute(SUBMIT, {"i": calculation_input})
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["extensions"]["field"] == field
    page = await client.execute(PAGE, {"first": 10})
    assert page["data"]["calculations"]["edges"] == []


@pytest.mark.parametrize(
    "raw",
    [
        "{monteCarloPi: {samples: 10}, primeCount: {limit: 10}}",  # two kinds
        "{}",  # none
        "{monteCarloPi: {samples: 1.5}}",  # not an integer
        '{monteCarloPi: {samples: "12ab"}}',
        "{monteCarloPi: {samples: 10, seed: 99999999999}}",  # beyond Int
    ],
)
async def test_malformed_input_is_bad_user_input(client: GraphQLClient, raw: str) -> None:
    client.token = (await client.register())["accessToken"]
    body = await client.execute(f"mutation {{ submitCalculation(input: {raw}) {{ id }} }}")
    assert error_codes(body) == ["BAD_USER_INPUT"], body


async def test_calculations_need_authentication(client: GraphQLClient) -> None:
    for query, variables in [
        (SUBMIT, {"i": {"monteCarloPi": {"samples": 10}}}),
        (GET, {"id": str(uuid.uuid4())}),
        (PAGE, {}),
        ("mutation($id: ID!) { cancelCalculation(id: $id) { id } }", {"id": str(uuid.uuid4())}),
    ]:
        assert error_codes(await client.execute(query, variables)) == ["UNAUTHENTICATED"]


async def test_unknown_or_malformed_ids(client: GraphQLClient) -> None:
    client.token = (await client.register())["accessToken"]
    for raw_id in [str(uuid.uuid4()), "not-a-uuid", ""]:
        assert (await client.execute(GET, {"id": raw_id}))["data"]["calculation"] is None
        cancel = await client.execute(
            "mutation($id: ID!) { cancelCalculation(id: $id) { id } }", {"id": raw_id}
        )
        assert error_codes(cancel) == ["NOT_FOUND"]


@pytest.fixture
async def queued_client(database_url: str, redis_url: str) -> Any:
    """The Redis-queue app with no worker: submitted calculations stay QUEUED."""
    await flush_redis(redis_url)
    settings = make_settings(database_url=database_url, redis_url=redis_url)
    async with running_app(settings) as (app, client):
        client.token = (await client.register())["accessToken"]
        yield app, client, database_url
    await flush_redis(redis_url)


async def test_pagination_newest_first_with_status_filter(queued_client: Any) -> None:
    _app, client, _url = queued_client
    ids = [(await submit(client, {"monteCarloPi": {"samples": 10 + i}}))["id"] for i in range(7)]
    seen: list[str] = []
    after = None
    while True:
        body = await client.execute(PAGE, {"first": 3, "after": after})
        page = body["data"]["calculations"]
        seen += [edge["node"]["id"] for edge in page["edges"]]
        assert len(page["edges"]) <= 3
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == list(reversed(ids))
    cancel = await client.execute(
        "mutation($id: ID!) { cancelCalculation(id: $id) { status } }", {"id": ids[2]}
    )
    assert cancel["data"]["cancelCalculation"]["status"] == "CANCELLED"
    cancelled = await client.execute(PAGE, {"status": "CANCELLED"})
    assert [e["node"]["id"] for e in cancelled["data"]["calculations"]["edges"]] == [ids[2]]
    queued = await client.execute(PAGE, {"status": "QUEUED", "first": 100})
    assert len(queued["data"]["calculations"]["edges"]) == 6
    empty = await client.execute(PAGE, {"first": 0})
    assert empty["data"]["calculations"]["edges"] == []
    for bad in [{"first": -1}, {"first": 101}, {"after": "garbage"}]:
        assert error_codes(await client.execute(PAGE, bad)) == ["BAD_USER_INPUT"]


async def test_cancelled_while_queued_never_runs(queued_client: Any) -> None:
    _app, client, url = queued_client
    submitted = await submit(client, {"monteCarloPi": {"samples": 1000}})
    body = await client.execute(
        "mutation($id: ID!) { cancelCalculation(id: $id) { status finishedAt } }",
        {"id": submitted["id"]},
    )
    assert body["data"]["cancelCalculation"]["status"] == "CANCELLED"
    # The message is still in Redis; when a worker gets it, it finds nothing to run.
    engine = create_engine(url)
    services = RunnerServices(create_session_factory(engine), InProcessEventBus())
    stats = await run_calculation(
        services,
        RunnerConfig(worker_id="test", stale_after=timedelta(seconds=30)),
        uuid.UUID(submitted["id"]),
    )
    await engine.dispose()
    assert stats.outcome is RunOutcome.SKIPPED
    calc = await status_of(client, submitted["id"])
    assert calc["status"] == "CANCELLED" and calc["attempts"] == 0
    again = await client.execute(
        "mutation($id: ID!) { cancelCalculation(id: $id) { status } }", {"id": submitted["id"]}
    )
    assert error_codes(again) == ["CONFLICT"]


@pytest.mark.parametrize("rate_limits", [True, False])
async def test_active_calculations_per_user_are_limited(
    database_url: str, redis_url: str, rate_limits: bool
) -> None:
    """The finding: CRUNCHQL_RATE_LIMITS=off silently removed the active cap as well."""
    await truncate(database_url)
    await flush_redis(redis_url)
    settings = make_settings(
        database_url=database_url,
        redis_url=redis_url,
        rate_limits=rate_limits,
        max_active_calculations=3,
    )
    async with running_app(settings) as (_app, client):
        client.token = (await client.register())["accessToken"]
        for _ in range(3):
            await submit(client, {"monteCarloPi": {"samples": 10}})
        refused = await client.execute(SUBMIT, {"i": {"monteCarloPi": {"samples": 10}}})
        assert error_codes(refused) == ["RATE_LIMITED"]
        assert refused["errors"][0]["extensions"]["retryAfter"] > 0
        # Another user is not affected.
        other = (await client.register())["accessToken"]
        accepted = await client.execute(
            SUBMIT, {"i": {"monteCarloPi": {"samples": 10}}}, token=other
        )
        assert "errors" not in accepted
    await flush_redis(redis_url)


async def test_parallel_submits_cannot_pass_the_active_limit(
    database_url: str, redis_url: str
) -> None:
    import asyncio

    await truncate(database_url)
    await flush_redis(redis_url)
    settings = make_settings(
        database_url=database_url, redis_url=redis_url, rate_limits=True,
        max_active_calculations=5,
    )  # fmt: skip
    async with running_app(settings) as (_app, client):
        client.token = (await client.register())["accessToken"]
        bodies = await asyncio.gather(
            *(client.execute(SUBMIT, {"i": {"monteCarloPi": {"samples": 10}}}) for _ in range(30))
        )
        accepted = [b for b in bodies if "errors" not in b]
        assert len(accepted) == 5
        assert all(error_codes(b) == ["RATE_LIMITED"] for b in bodies if "errors" in b)
    await flush_redis(redis_url)


async def test_per_user_caps_can_be_turned_off(database_url: str) -> None:
    """0 turns a per-user cap off (a deployment whose users all trust each other): no
    refusal past the default of 20 active calculations, no running limit in the runner."""
    import asyncio

    await truncate(database_url)
    settings = make_settings(
        database_url=database_url, max_active_calculations=0, max_running_per_user=0
    )
    async with running_app(settings) as (app, client):
        client.token = (await client.register())["accessToken"]
        bodies = await asyncio.gather(
            *(client.execute(SUBMIT, {"i": {"monteCarloPi": {"samples": 10}}}) for _ in range(25))
        )
        assert [b for b in bodies if "errors" in b] == []
        queue = app.state.runtime.embedded_queue
        assert queue is not None and queue.config.max_running_per_user is None


async def test_cors_is_open_in_development_and_explicit_otherwise(empty_sqlite_url: str) -> None:
    preflight = {
        "Origin": "http://localhost:5173",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with running_app(make_settings(database_url=empty_sqlite_url)) as (_, client):
        response = await client.http.options("/graphql", headers=preflight)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] in ("*", "http://localhost:5173")
    settings = make_settings(database_url=empty_sqlite_url, cors_origins=["https://app.example"])
    async with running_app(settings) as (_, client):
        refused = await client.http.options("/graphql", headers=preflight)
        assert "access-control-allow-origin" not in refused.headers
        allowed = await client.http.options(
            "/graphql", headers={**preflight, "Origin": "https://app.example"}
        )
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
