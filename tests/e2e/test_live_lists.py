"""myCalculationUpdates over graphql-transport-ws on a real Uvicorn (embedded bus and
queue) and on the production path (Redis bus, worker process): one subscription sees
every change to the caller's calculations, and nothing of anyone else's."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.processes import HttpGraphQL, embedded_api, ws_session

pytestmark = pytest.mark.slow

MINE = """subscription($kind: String, $status: CalculationStatus) {
  myCalculationUpdates(kind: $kind, status: $status) { id kind status progress
    result { __typename } } }"""


@pytest.fixture(scope="module")
async def embedded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with embedded_api(tmp_path_factory.mktemp("live-lists")) as base:
        yield base


async def subscribe(socket_: Any, op_id: str, **variables: Any) -> None:
    payload = {"query": MINE, "variables": variables}
    await socket_.send(json.dumps({"id": op_id, "type": "subscribe", "payload": payload}))


async def collect_until(
    socket_: Any, done: Any, ignore: set[str], timeout: float = 120
) -> dict[str, list[dict[str, Any]]]:
    """Events per operation id (but those of calculations in ``ignore``), until
    ``done(events)`` holds."""
    events: dict[str, list[dict[str, Any]]] = {}
    async with asyncio.timeout(timeout):
        while not done(events):
            message = json.loads(await socket_.recv())
            assert message["type"] == "next", message
            assert "errors" not in message["payload"], message
            event = message["payload"]["data"]["myCalculationUpdates"]
            if event["id"] not in ignore:
                events.setdefault(message["id"], []).append(event)
    return events


async def until_live(graphql: HttpGraphQL, socket_: Any, op_ids: set[str]) -> set[str]:
    """Submit small probes until one shows up, finished, on each subscription: from then
    on, the subscriptions are certainly listening. Returns the probes' ids."""
    probes: set[str] = set()
    seen: set[str] = set()
    async with asyncio.timeout(120):
        while seen != op_ids:
            probes.add((await graphql.submit({"primeCount": {"limit": 10}}))["id"])
            try:
                async with asyncio.timeout(2):
                    while seen != op_ids:
                        message = json.loads(await socket_.recv())
                        event = message["payload"]["data"]["myCalculationUpdates"]
                        if event["id"] in probes and event["status"] == "SUCCEEDED":
                            seen.add(message["id"])
            except TimeoutError:
                continue
    return probes


async def check_one_subscription_sees_all(base: str) -> None:
    owner, stranger = HttpGraphQL(base), HttpGraphQL(base)
    await owner.register()
    await stranger.register()
    async with ws_session(base, owner.token) as mine, ws_session(base, stranger.token) as theirs:
        await subscribe(mine, "all")
        await subscribe(mine, "primes", kind="primeCount", status="SUCCEEDED")
        await subscribe(theirs, "theirs")
        probes = await until_live(owner, mine, {"all", "primes"})
        probes |= await until_live(stranger, theirs, {"theirs"})
        submitted = [
            await owner.submit({"monteCarloPi": {"samples": 200_000_000, "seed": 1}}),
            await owner.submit({"primeCount": {"limit": 100_000}}),
            await owner.submit({"mandelbrot": {"width": 64, "height": 48, "maxIterations": 50}}),
        ]
        ids = {calc["id"] for calc in submitted}

        def all_finished(events: dict[str, list[dict[str, Any]]]) -> bool:
            final = {e["id"] for e in events.get("all", []) if e["status"] == "SUCCEEDED"}
            return final == ids and bool(events.get("primes"))

        events = await collect_until(mine, all_finished, probes)
        seen = events["all"]
        assert {e["id"] for e in seen} == ids
        for calc in submitted:
            own = [e for e in seen if e["id"] == calc["id"]]
            # From its creation (as the feed found it on first sight: QUEUED, or
            # further along for a quick job) to its end, never a step back.
            rank = {"QUEUED": 0, "RUNNING": 1, "SUCCEEDED": 2}
            statuses = [rank[e["status"]] for e in own]
            assert statuses == sorted(statuses)
            assert own[-1]["status"] == "SUCCEEDED" and own[-1]["result"] is not None
            progress = [e["progress"] for e in own]
            assert progress == sorted(progress)
        pi = [e for e in seen if e["kind"] == "monteCarloPi" and e["status"] == "RUNNING"]
        assert any(0 < e["progress"] < 1 for e in pi)  # progress, not just status changes
        assert [(e["kind"], e["status"]) for e in events["primes"]] == [("primeCount", "SUCCEEDED")]
        # The other user's socket got nothing of them (only its own probes).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                while True:
                    message = json.loads(await theirs.recv())
                    assert message["payload"]["data"]["myCalculationUpdates"]["id"] in probes
    await owner.close()
    await stranger.close()


async def test_one_subscription_for_a_whole_list_embedded(embedded: str) -> None:
    await check_one_subscription_sees_all(embedded)


@pytest.mark.postgres
@pytest.mark.redis
async def test_one_subscription_for_a_whole_list_with_redis_and_a_worker(stack: Stack) -> None:
    await check_one_subscription_sees_all(stack.base)


async def test_the_list_subscription_needs_a_user_and_a_known_kind(embedded: str) -> None:
    owner = HttpGraphQL(embedded)
    await owner.register()
    for token, variables, code in [
        (None, {}, "UNAUTHENTICATED"),
        (owner.token, {"kind": "noSuchKind"}, "BAD_USER_INPUT"),
    ]:
        async with ws_session(embedded, token) as socket_:
            await subscribe(socket_, "1", **variables)
            message = json.loads(await asyncio.wait_for(socket_.recv(), 30))
            payload = message["payload"]
            errors = payload if message["type"] == "error" else payload["errors"]
            assert [e["extensions"]["code"] for e in errors] == [code], message
    await owner.close()
