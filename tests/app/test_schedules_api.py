"""The schedules API on both databases: create and preview, validation, ownership,
pause/resume/delete, the ACTIVE-schedule limit."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import GraphQLClient, error_codes, make_settings, running_app, wait_for

FIELDS = """id name status kind input cron runAt timezone startsAt endsAt misfirePolicy
nextRunAt skippedRuns createdAt owner { id } nextRuns(count: 3)"""
CREATE = f"mutation($i: ScheduleInput!) {{ createSchedule(input: $i) {{ {FIELDS} }} }}"
GET = f"query($id: ID!) {{ schedule(id: $id) {{ {FIELDS} }} }}"
PI = {"monteCarloPi": {"samples": 1000, "seed": 1}}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
async def app_client(database_url: str) -> AsyncIterator[GraphQLClient]:
    settings = make_settings(database_url=database_url, max_active_schedules=3)
    async with running_app(settings) as (_app, graphql):
        yield graphql


async def signed_in(client: GraphQLClient) -> dict[str, Any]:
    payload = await client.register()
    client.token = payload["accessToken"]
    return payload


async def create(client: GraphQLClient, **fields: Any) -> dict[str, Any]:
    body = await client.execute(CREATE, {"i": {"calculation": PI, **fields}})
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["createSchedule"]
    return result


async def test_a_cron_schedule_previews_its_runs_in_its_zone(app_client: GraphQLClient) -> None:
    user = await signed_in(app_client)
    # Berlin skips 02:00-03:00 on 31 March 2030: the 02:30 run fires at 03:00 CEST.
    created = await create(
        app_client,
        cron="30 2 * * *",
        timezone="Europe/Berlin",
        startsAt="2030-03-29T12:00:00Z",
        name="nightly pi",
        misfirePolicy="SKIP",
    )
    assert created["status"] == "ACTIVE"
    assert created["kind"] == "monteCarloPi"
    assert created["input"] == {"monteCarloPi": {"samples": 1000, "seed": 1}}
    assert created["owner"]["id"] == user["user"]["id"]
    assert created["misfirePolicy"] == "SKIP"
    assert created["skippedRuns"] == 0
    assert [parse(each) for each in created["nextRuns"]] == [
        datetime(2030, 3, 30, 1, 30, tzinfo=UTC),
        datetime(2030, 3, 31, 1, 0, tzinfo=UTC),
        datetime(2030, 4, 1, 0, 30, tzinfo=UTC),
    ]
    assert parse(created["nextRunAt"]) == parse(created["nextRuns"][0])
    body = await app_client.execute(GET, {"id": created["id"]})
    assert body["data"]["schedule"] == created
    body = await app_client.execute(
        "query($id: ID!) { schedule(id: $id) { nextRuns(count: 100) "
        "runs { edges { node { id } } pageInfo { hasNextPage } } } }",
        {"id": created["id"]},
    )
    runs = body["data"]["schedule"]["nextRuns"]
    assert len(runs) == 100 and runs == sorted(set(runs))
    assert body["data"]["schedule"]["runs"] == {"edges": [], "pageInfo": {"hasNextPage": False}}


async def test_a_one_off_schedule_fires_once(app_client: GraphQLClient) -> None:
    await signed_in(app_client)
    run_at = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    created = await create(app_client, runAt=iso(run_at), misfirePolicy="RUN_ONCE")
    assert created["cron"] is None and created["timezone"] == "UTC"
    assert [parse(each) for each in created["nextRuns"]] == [run_at]


def _future(days: int) -> str:
    return iso(datetime.now(UTC) + timedelta(days=days))


BAD_INPUTS: list[tuple[dict[str, Any], str]] = [
    ({"cron": "* * * * *", "runAt": _future(1)}, "cron"),
    ({}, "cron"),
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "0 0 L * *"}, "cron"),
    ({"cron": "0 0 30 2 *"}, "cron"),
    ({"cron": "* * * * *", "timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({"cron": "* * * * *", "timezone": "../../etc/passwd"}, "timezone"),
    ({"runAt": "2020-01-01T00:00:00Z"}, "runAt"),
    ({"runAt": "2031-01-01T00:00:00"}, "runAt"),  # no offset: which zone?
    ({"cron": "* * * * *", "startsAt": _future(3), "endsAt": _future(2)}, "endsAt"),
    ({"cron": "* * * * *", "endsAt": "2020-01-01T00:00:00Z"}, "endsAt"),
    ({"runAt": _future(5), "endsAt": _future(4)}, "runAt"),
    ({"cron": "* * * * *", "name": "n" * 201}, "name"),
    ({"cron": "0 0 1 1 *", "startsAt": "9999-12-31T23:59:00Z"}, "cron"),  # never fires
    ({"runAt": "0001-01-01T00:00:00Z", "startsAt": "0001-01-01T00:00:00Z"}, "runAt"),
    ({"cron": "* * * * *", "calculation": {"monteCarloPi": {"samples": 0}}}, None),
]


@pytest.mark.parametrize(("fields", "field"), BAD_INPUTS)
async def test_bad_input_names_the_field_and_creates_nothing(
    app_client: GraphQLClient, fields: dict[str, Any], field: str | None
) -> None:
    await signed_in(app_client)
    body = await app_client.execute(CREATE, {"i": {"calculation": PI, **fields}})
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    extensions = body["errors"][0]["extensions"]
    if field is None:
        assert extensions["field"].startswith("calculation.monteCarloPi.")
    else:
        assert extensions["field"] == field, body
    listed = await app_client.execute("{ schedules { edges { node { id } } } }")
    assert listed["data"]["schedules"]["edges"] == []


async def test_preview_size_is_bounded(app_client: GraphQLClient) -> None:
    await signed_in(app_client)
    created = await create(app_client, cron="*/5 * * * *")
    for count in (101, -1):
        body = await app_client.execute(
            "query($id: ID!, $n: Int) { schedule(id: $id) { nextRuns(count: $n) } }",
            {"id": created["id"], "n": count},
        )
        assert error_codes(body) == ["BAD_USER_INPUT"]
        assert body["errors"][0]["extensions"]["field"] == "count"


async def test_another_users_schedule_is_absent(app_client: GraphQLClient) -> None:
    await signed_in(app_client)
    mine = await create(app_client, cron="0 * * * *")
    await signed_in(app_client)  # someone else now
    body = await app_client.execute(GET, {"id": mine["id"]})
    assert "errors" not in body and body["data"] == {"schedule": None}
    for mutation in ("pauseSchedule", "resumeSchedule"):
        body = await app_client.execute(
            f"mutation($id: ID!) {{ {mutation}(id: $id) {{ id }} }}", {"id": mine["id"]}
        )
        assert error_codes(body) == ["NOT_FOUND"]
    for bad_id in (mine["id"], "not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        body = await app_client.execute(
            "mutation($id: ID!) { deleteSchedule(id: $id) }", {"id": bad_id}
        )
        assert error_codes(body) == ["NOT_FOUND"]
    listed = await app_client.execute("{ schedules { edges { node { id } } } }")
    assert listed["data"]["schedules"]["edges"] == []


async def test_pause_resume_and_delete(app_client: GraphQLClient) -> None:
    await signed_in(app_client)
    created = await create(app_client, cron="* * * * *")
    pause = "mutation($id: ID!) { pauseSchedule(id: $id) { status nextRunAt nextRuns } }"
    body = await app_client.execute(pause, {"id": created["id"]})
    assert body["data"]["pauseSchedule"] == {"status": "PAUSED", "nextRunAt": None, "nextRuns": []}
    body = await app_client.execute("query { schedules(status: PAUSED) { edges { node { id } } } }")
    assert [e["node"]["id"] for e in body["data"]["schedules"]["edges"]] == [created["id"]]
    before = datetime.now(UTC)
    body = await app_client.execute(
        "mutation($id: ID!) { resumeSchedule(id: $id) { status nextRunAt } }", {"id": created["id"]}
    )
    resumed = body["data"]["resumeSchedule"]
    assert resumed["status"] == "ACTIVE"
    # The next minute after now: nothing missed while paused is owed.
    next_run = parse(resumed["nextRunAt"])
    assert before < next_run <= before + timedelta(minutes=1)
    assert next_run.second == 0 and next_run.microsecond == 0
    body = await app_client.execute(
        "mutation($id: ID!) { deleteSchedule(id: $id) }", {"id": created["id"]}
    )
    assert "errors" not in body and body["data"] == {"deleteSchedule": True}
    assert (await app_client.execute(GET, {"id": created["id"]}))["data"] == {"schedule": None}


async def test_at_most_the_limit_of_active_schedules(app_client: GraphQLClient) -> None:
    await signed_in(app_client)
    # In parallel: the count and the insert are one step per owner.
    results = await asyncio.gather(
        *(
            app_client.execute(CREATE, {"i": {"calculation": PI, "cron": f"{m} * * * *"}})
            for m in range(6)
        )
    )
    created = [r["data"]["createSchedule"] for r in results if "errors" not in r]
    refused = [r for r in results if "errors" in r]
    assert len(created) == 3  # the limit in this app's settings
    assert all(error_codes(r) == ["RATE_LIMITED"] for r in refused)
    # A paused schedule does not count; resuming it past the limit is refused.
    await app_client.execute(
        "mutation($id: ID!) { pauseSchedule(id: $id) { id } }", {"id": created[0]["id"]}
    )
    await create(app_client, cron="59 * * * *")
    body = await app_client.execute(
        "mutation($id: ID!) { resumeSchedule(id: $id) { id } }", {"id": created[0]["id"]}
    )
    assert error_codes(body) == ["RATE_LIMITED"]
    listed = await app_client.execute(
        "{ schedules(status: ACTIVE, first: 10) { edges { node { id } } } }"
    )
    assert len(listed["data"]["schedules"]["edges"]) == 3


async def test_schedules_page_newest_first(app_client: GraphQLClient) -> None:
    await signed_in(app_client)
    ids = [(await create(app_client, cron=f"{m} 1 * * *"))["id"] for m in range(3)]
    page = await app_client.execute(
        "{ schedules(first: 2) { edges { node { id } cursor } "
        "pageInfo { hasNextPage endCursor } } }"
    )
    first = page["data"]["schedules"]
    assert [e["node"]["id"] for e in first["edges"]] == ids[::-1][:2]
    assert first["pageInfo"]["hasNextPage"] is True
    rest = await app_client.execute(
        "query($a: String) { schedules(first: 2, after: $a) { edges { node { id } } "
        "pageInfo { hasNextPage } } }",
        {"a": first["pageInfo"]["endCursor"]},
    )
    assert [e["node"]["id"] for e in rest["data"]["schedules"]["edges"]] == [ids[0]]
    body = await app_client.execute('{ schedules(after: "garbage") { edges { cursor } } }')
    assert error_codes(body) == ["BAD_USER_INPUT"]


async def test_readyz_says_who_leads_the_schedulers(database_url: str) -> None:
    settings = make_settings(database_url=database_url, run_scheduler=True)
    async with running_app(settings) as (_app, graphql):

        async def leader() -> str | None:
            body = (await graphql.http.get("/readyz")).json()
            scheduler = body["scheduler"]
            name = scheduler.get("leader") or (
                scheduler.get("identity") if scheduler.get("role") == "leader" else None
            )
            return str(name) if name else None

        # This process (embedded mode) leads: on PostgreSQL through the advisory lock.
        name = await wait_for(leader, timeout=15, interval=0.1)
        assert f":{os.getpid()}" in name
