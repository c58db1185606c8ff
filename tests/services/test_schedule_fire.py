"""Firing on both databases, with the clock pinned: one calculation per schedule and
instant, misfire policies, limits, disabled owners, one-off and paused schedules, and
the scheduler loop itself (second-granularity crons, real clock)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from crunchql.core.lifecycle import CalculationEvent, CalculationStatus, EventKind
from crunchql.db.engine import unit_of_work
from crunchql.db.models import User
from crunchql.db.repositories import CalculationRepository
from crunchql.pubsub.bus import Subscription
from crunchql.pubsub.channels import user_events_key
from crunchql.services.container import Limits
from crunchql.services.recurrence import MisfirePolicy
from crunchql.services.schedule_fire import FireConfig, FireOutcome, FireReport, fire_batch
from crunchql.workers.scheduler import LocalLeadership, Scheduler, SchedulerConfig
from tests.conftest import GraphQLClient, make_settings, running_app, wait_for

PI = {"monteCarloPi": {"samples": 1000, "seed": 3}}
RUNS = """query($id: ID!) { schedule(id: $id) { status nextRunAt skippedRuns nextRuns
  runs(first: 50) { edges { node { id scheduledFor createdAt status
    schedule { id } } } } } }"""


class RecordingQueue:
    def __init__(self) -> None:
        self.sent: list[uuid.UUID] = []

    async def enqueue(self, calculation_id: uuid.UUID) -> None:
        self.sent.append(calculation_id)


@dataclass
class Harness:
    client: GraphQLClient
    services: Any
    queue: RecordingQueue

    async def create(self, **fields: Any) -> dict[str, Any]:
        body = await self.client.execute(
            "mutation($i: ScheduleInput!) { createSchedule(input: $i) { id nextRunAt } }",
            {"i": {"calculation": PI, **fields}},
        )
        assert "errors" not in body, body
        created: dict[str, Any] = body["data"]["createSchedule"]
        created["due"] = parse(created["nextRunAt"])
        return created

    async def fire(self, now: datetime, limits: Limits | None = None) -> FireReport:
        config = FireConfig(limits=limits or self.services.limits)
        return await fire_batch(
            self.services.session_factory, self.queue, config, now, clock=lambda: now
        )

    async def runs(self, schedule_id: str) -> dict[str, Any]:
        body = await self.client.execute(RUNS, {"id": schedule_id})
        assert "errors" not in body, body
        result: dict[str, Any] = body["data"]["schedule"]
        return result


async def announced(subscription: Subscription, count: int) -> list[CalculationEvent]:
    """The next ``count`` events on a user's key (each within 30 s)."""
    events = []
    for _ in range(count):
        event = await subscription.get(timeout=30)
        assert isinstance(event, CalculationEvent), event
        events.append(event)
    return events


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
async def harness(database_url: str) -> AsyncIterator[Harness]:
    async with running_app(make_settings(database_url=database_url)) as (app, graphql):
        payload = await graphql.register()
        graphql.token = payload["accessToken"]
        yield Harness(graphql, app.state.runtime.services, RecordingQueue())


async def test_a_due_fire_creates_one_calculation_once(harness: Harness) -> None:
    schedule = await harness.create(cron="* * * * *")
    due = schedule["due"]
    report = await harness.fire(due + timedelta(milliseconds=250))
    assert report.outcomes == {FireOutcome.CREATED: 1}
    assert report.lags == [0.25]
    state = await harness.runs(schedule["id"])
    [run] = [edge["node"] for edge in state["runs"]["edges"]]
    assert parse(run["scheduledFor"]) == due
    assert run["schedule"] == {"id": schedule["id"]} and run["status"] == "QUEUED"
    assert harness.queue.sent == [uuid.UUID(run["id"])]  # sent after commit
    assert parse(state["nextRunAt"]) == due + timedelta(minutes=1)
    # The same instant again, and two schedulers racing for the next one: one each.
    assert (await harness.fire(due + timedelta(seconds=1))).processed == 0
    following = due + timedelta(minutes=1, milliseconds=100)
    reports = await asyncio.gather(harness.fire(following), harness.fire(following))
    assert sum(r.outcomes.get(FireOutcome.CREATED, 0) for r in reports) == 1
    state = await harness.runs(schedule["id"])
    instants = [parse(edge["node"]["scheduledFor"]) for edge in state["runs"]["edges"]]
    assert instants == [due + timedelta(minutes=1), due]
    assert len(harness.queue.sent) == 2


async def test_a_fired_calculation_is_announced_to_its_owners_list_views(
    harness: Harness,
) -> None:
    """As a submission's: myCalculationUpdates shows a scheduled run once it exists."""
    schedule = await harness.create(cron="* * * * *")
    owner = uuid.UUID((await harness.client.execute("{ me { id } }"))["data"]["me"]["id"])
    bus = harness.services.bus
    async with bus.subscribe(user_events_key(owner)) as subscription:
        now = schedule["due"] + timedelta(seconds=1)
        await fire_batch(
            harness.services.session_factory,
            harness.queue,
            FireConfig(limits=harness.services.limits),
            now,
            clock=lambda: now,
            announce=bus.publish,
        )
        [run_id] = harness.queue.sent
        [event] = await announced(subscription, 1)
    assert (event.id, event.owner_id) == (run_id, owner)
    assert (event.kind, event.status, event.version) == (
        EventKind.STATUS,
        CalculationStatus.QUEUED,
        0,
    )


@pytest.mark.parametrize("policy", [MisfirePolicy.SKIP, MisfirePolicy.RUN_ONCE])
async def test_missed_fires_follow_the_policy(harness: Harness, policy: MisfirePolicy) -> None:
    schedule = await harness.create(cron="* * * * *", misfirePolicy=policy.value)
    due = schedule["due"]
    # No scheduler from before `due` until 5 min 10 s after it: due..due+4 min missed,
    # due+5 min is 10 s late, within the grace: it fires on time, in the next pass.
    back = due + timedelta(minutes=5, seconds=10)
    first = await harness.fire(back)
    assert first.misfires == {policy: 5}
    second = await harness.fire(back)
    assert second.outcomes == {FireOutcome.CREATED: 1} and second.lags == [10.0]
    state = await harness.runs(schedule["id"])
    instants = sorted(parse(edge["node"]["scheduledFor"]) for edge in state["runs"]["edges"])
    on_time = due + timedelta(minutes=5)
    if policy is MisfirePolicy.RUN_ONCE:
        assert instants == [due + timedelta(minutes=4), on_time]  # one for all missed
    else:
        assert instants == [on_time]
    assert parse(state["nextRunAt"]) == due + timedelta(minutes=6)


async def test_a_fire_past_the_active_calculation_limit_is_skipped_and_counted(
    harness: Harness,
) -> None:
    schedule = await harness.create(cron="*/5 * * * *")
    user_id = uuid.UUID((await harness.client.execute("{ me { id } }"))["data"]["me"]["id"])
    async with unit_of_work(harness.services.session_factory) as session:
        await CalculationRepository(session).create(
            owner_id=user_id, kind="monteCarloPi", params={"samples": 1}, now=datetime.now(UTC)
        )
    limits = Limits(rate_limits=False, max_active_calculations=1)  # a cap, not a rate
    report = await harness.fire(schedule["due"] + timedelta(seconds=1), limits)
    assert report.outcomes == {FireOutcome.SKIPPED_LIMIT: 1}
    state = await harness.runs(schedule["id"])
    assert state["skippedRuns"] == 1 and state["runs"]["edges"] == []
    assert parse(state["nextRunAt"]) == schedule["due"] + timedelta(minutes=5)
    assert harness.queue.sent == []


async def test_a_disabled_users_schedules_do_not_fire(harness: Harness) -> None:
    schedule = await harness.create(cron="* * * * *")
    async with unit_of_work(harness.services.session_factory) as session:
        await session.execute(update(User).values(is_active=False))
    report = await harness.fire(schedule["due"] + timedelta(seconds=1))
    assert report.outcomes == {FireOutcome.SKIPPED_DISABLED: 1}
    async with unit_of_work(harness.services.session_factory) as session:
        await session.execute(update(User).values(is_active=True))
    state = await harness.runs(schedule["id"])
    assert state["runs"]["edges"] == [] and state["skippedRuns"] == 0
    assert parse(state["nextRunAt"]) == schedule["due"] + timedelta(minutes=1)


async def test_a_one_off_schedule_finishes_after_its_fire(harness: Harness) -> None:
    run_at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    schedule = await harness.create(runAt=run_at.isoformat())
    report = await harness.fire(run_at + timedelta(milliseconds=40))
    assert report.outcomes == {FireOutcome.CREATED: 1}
    state = await harness.runs(schedule["id"])
    assert (state["status"], state["nextRunAt"], state["nextRuns"]) == ("FINISHED", None, [])
    assert len(state["runs"]["edges"]) == 1
    assert (await harness.fire(run_at + timedelta(days=1))).processed == 0


async def test_ends_at_finishes_a_cron_schedule(harness: Harness) -> None:
    start = (datetime.now(UTC) + timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    schedule = await harness.create(
        cron="0 * * * *",
        startsAt=start.isoformat(),
        endsAt=(start + timedelta(hours=1)).isoformat(),
    )
    assert schedule["due"] == start
    for hour in range(2):
        report = await harness.fire(start + timedelta(hours=hour, seconds=2))
        assert report.outcomes == {FireOutcome.CREATED: 1}
    state = await harness.runs(schedule["id"])
    assert state["status"] == "FINISHED" and len(state["runs"]["edges"]) == 2


async def test_paused_schedules_do_not_fire_and_resume_without_a_burst(harness: Harness) -> None:
    schedule = await harness.create(cron="* * * * *")
    await harness.client.execute(
        "mutation($id: ID!) { pauseSchedule(id: $id) { id } }", {"id": schedule["id"]}
    )
    assert (await harness.fire(schedule["due"] + timedelta(hours=3))).processed == 0
    body = await harness.client.execute(
        "mutation($id: ID!) { resumeSchedule(id: $id) { nextRunAt } }", {"id": schedule["id"]}
    )
    resumed_due = parse(body["data"]["resumeSchedule"]["nextRunAt"])
    assert (await harness.fire(datetime.now(UTC))).processed == 0  # nothing owed
    report = await harness.fire(resumed_due + timedelta(seconds=1))
    assert report.outcomes == {FireOutcome.CREATED: 1}
    state = await harness.runs(schedule["id"])
    assert [parse(e["node"]["scheduledFor"]) for e in state["runs"]["edges"]] == [resumed_due]


async def test_deleting_a_schedule_keeps_its_calculations(harness: Harness) -> None:
    schedule = await harness.create(cron="* * * * *")
    await harness.fire(schedule["due"] + timedelta(seconds=1))
    [run_id] = harness.queue.sent
    body = await harness.client.execute(
        "mutation($id: ID!) { deleteSchedule(id: $id) }", {"id": schedule["id"]}
    )
    assert "errors" not in body and body["data"] == {"deleteSchedule": True}
    body = await harness.client.execute(
        "query($id: ID!) { calculation(id: $id) { id schedule { id } scheduledFor } }",
        {"id": str(run_id)},
    )
    calculation = body["data"]["calculation"]
    assert calculation["schedule"] is None
    assert parse(calculation["scheduledFor"]) == schedule["due"]


async def test_the_scheduler_fires_each_second_exactly_once(database_url: str) -> None:
    """The loop on the real clock: sleeps to each instant, fires it, never twice."""
    settings = make_settings(database_url=database_url, scheduler_seconds_field=True)
    async with running_app(settings) as (app, graphql):
        graphql.token = (await graphql.register())["accessToken"]
        services = app.state.runtime.services
        harness = Harness(graphql, services, RecordingQueue())
        schedule = await harness.create(cron="* * * * * *")
        owner = uuid.UUID((await graphql.execute("{ me { id } }"))["data"]["me"]["id"])
        scheduler = Scheduler(
            services.session_factory,
            harness.queue,
            SchedulerConfig(fire=FireConfig(limits=services.limits), max_sleep=5.0),
            LocalLeadership(),
            publish=services.bus.publish,
        )
        async with services.bus.subscribe(user_events_key(owner)) as subscription:
            scheduler.start()
            try:

                async def four_runs() -> list[Any]:
                    edges = (await harness.runs(schedule["id"]))["runs"]["edges"]
                    return edges if len(edges) >= 4 else []

                await wait_for(four_runs, timeout=60, interval=0.2)
            finally:
                await scheduler.stop()
            edges = (await harness.runs(schedule["id"]))["runs"]["edges"]
            # Each run announced to its owner's list views, once.
            events = await announced(subscription, len(edges))
            assert subscription.pending == 0
        assert sorted(e.id for e in events) == sorted(uuid.UUID(e["node"]["id"]) for e in edges)
    nodes = [edge["node"] for edge in edges][::-1]
    instants = [parse(node["scheduledFor"]) for node in nodes]
    first = instants[0]
    assert instants == [first + timedelta(seconds=i) for i in range(len(instants))]
    # Every calculation's message went out, once.
    assert sorted(harness.queue.sent) == sorted(uuid.UUID(node["id"]) for node in nodes)
    # Each on time: after its instant, within the misfire grace (30 s).
    for node, instant in zip(nodes, instants, strict=True):
        assert timedelta(0) <= parse(node["createdAt"]) - instant <= timedelta(seconds=30)
