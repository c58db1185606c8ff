"""The embedded default on a real Uvicorn: SQLite, in-process queue and event bus, no
Redis, no worker process — and the WebSocket protocol rules of the contract."""

from __future__ import annotations

import json
import math
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets

from crunchql.db.migrate import upgrade_async
from tests.e2e.processes import (
    HttpGraphQL,
    ServiceProcess,
    calculation_kinds,
    collect_updates,
    pi_deadline,
    service_env,
    start_api,
    wait_healthy,
    wait_running,
    wait_until,
    worker_boot_deadline,
    ws_session,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def embedded(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[str, Path, dict[str, str]]]:
    directory = tmp_path_factory.mktemp("embedded")
    url = f"sqlite+aiosqlite:///{directory / 'crunchql.sqlite3'}"
    await upgrade_async(url)
    env = service_env(url, None)
    api, base = start_api(env, directory)
    try:
        await wait_healthy(base, api)
        yield base, directory, env
    finally:
        api.stop()


async def test_submit_and_watch_without_redis(embedded: tuple[str, Path, dict[str, str]]) -> None:
    base, _, _ = embedded
    graphql = HttpGraphQL(base)
    await graphql.register()
    submitted = await graphql.submit({"monteCarloPi": {"samples": 300_000_000, "seed": 2}})
    # The process warms every kernel before its first job (a fresh clone compiles them).
    deadline = worker_boot_deadline(await calculation_kinds(base)) + pi_deadline(300_000_000)
    async with ws_session(base, graphql.token) as socket_:
        events, errors = await collect_updates(socket_, submitted["id"], timeout=deadline)
    assert errors == []
    assert [e["progress"] for e in events] == sorted(e["progress"] for e in events)
    assert events[-1]["status"] == "SUCCEEDED"
    result = events[-1]["result"]
    assert abs(result["estimate"] - math.pi) < 5 * result["standardError"]
    await graphql.close()


async def test_k_means_in_the_embedded_mode(embedded: tuple[str, Path, dict[str, str]]) -> None:
    from crunchql.compute import k_means
    from crunchql.compute.catalog import K_MEANS

    base, _, _ = embedded
    graphql = HttpGraphQL(base)
    await graphql.register()
    raw = {"n": 20_000, "dimensions": 3, "k": 4, "clusters": 4, "spread": 0.02, "seed": 5}
    submitted = await graphql.submit({"kMeans": raw})
    assert submitted["input"] == K_MEANS.validate(raw)
    async with ws_session(base, graphql.token) as socket_:
        events, errors = await collect_updates(socket_, submitted["id"])
    assert errors == []
    assert [e["progress"] for e in events] == sorted(e["progress"] for e in events)
    assert events[-1]["status"] == "SUCCEEDED"
    expected = k_means.k_means(K_MEANS.parse(raw)).result()
    assert events[-1]["result"] == {"__typename": "KMeansResult", **expected}
    await graphql.close()


async def test_websockets_are_not_compressed_unless_configured(
    embedded: tuple[str, Path, dict[str, str]],
) -> None:
    """The client offers permessage-deflate (the websockets library and browsers do by
    default); crunchql serve declines it (CRUNCHQL_WS_COMPRESSION=false)."""
    base, _, _ = embedded
    async with websockets.connect(
        f"ws://{base}/graphql", subprotocols=["graphql-transport-ws"], compression="deflate"
    ) as socket_:
        assert socket_.request is not None and socket_.response is not None
        assert "permessage-deflate" in socket_.request.headers["Sec-WebSocket-Extensions"]
        assert "Sec-WebSocket-Extensions" not in socket_.response.headers


@pytest.mark.parametrize("subprotocol", ["graphql-transport-ws", "graphql-ws"])
async def test_bad_token_in_connection_init_closes_with_4403(
    embedded: tuple[str, Path, dict[str, str]], subprotocol: str
) -> None:
    base, _, _ = embedded
    async with websockets.connect(f"ws://{base}/graphql", subprotocols=[subprotocol]) as socket_:
        await socket_.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": "Bearer nope"}})
        )
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket_.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


async def test_anonymous_socket_gets_unauthenticated_on_protected_subscription(
    embedded: tuple[str, Path, dict[str, str]],
) -> None:
    base, _, _ = embedded
    async with ws_session(base, None) as socket_:
        events, errors = await collect_updates(socket_, "00000000-0000-0000-0000-000000000000")
    assert events == []
    assert errors[0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_legacy_graphql_ws_protocol(embedded: tuple[str, Path, dict[str, str]]) -> None:
    base, _, _ = embedded
    graphql = HttpGraphQL(base)
    token = await graphql.register()
    submitted = await graphql.submit({"monteCarloPi": {"samples": 1000, "seed": 2}})
    async with websockets.connect(f"ws://{base}/graphql", subprotocols=["graphql-ws"]) as socket_:
        await socket_.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}})
        )
        assert json.loads(await socket_.recv())["type"] == "connection_ack"
        await socket_.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "start",
                    "payload": {
                        "query": "subscription($id: ID!) "
                        "{ calculationUpdates(id: $id) { status } }",
                        "variables": {"id": submitted["id"]},
                    },
                }
            )
        )
        statuses = []
        while True:
            message = json.loads(await socket_.recv())
            if message["type"] == "data":
                statuses.append(message["payload"]["data"]["calculationUpdates"]["status"])
            elif message["type"] == "complete":
                break
    assert statuses[-1] == "SUCCEEDED"
    await graphql.close()


async def test_restart_resumes_accepted_calculations(
    embedded: tuple[str, Path, dict[str, str]], tmp_path: Path
) -> None:
    """A crash of the only process loses nothing: the next start runs what was accepted."""
    _, _, env = embedded
    api, base = start_api(env, tmp_path)
    second: ServiceProcess | None = None
    try:
        await wait_healthy(base, api)
        graphql = HttpGraphQL(base)
        await graphql.register()
        # 60 chunks, ~4-6 s on 2 idle cores: 59 of them are left when it is seen running.
        samples = 4_000_000_000
        submitted = await graphql.submit({"monteCarloPi": {"samples": samples, "seed": 4}})
        boot = worker_boot_deadline(await calculation_kinds(base))  # warm-up comes first
        await wait_running(graphql, submitted["id"], api, timeout=boot)
        api.kill(signal.SIGKILL)
        api.stop()
        second, base = start_api(env, tmp_path)
        await wait_healthy(base, second)
        graphql.url = f"http://{base}/graphql"  # same database, same secret: token still valid

        async def finished() -> dict[str, object] | None:
            calc = await graphql.get(submitted["id"], "status attempts progress")
            return calc if calc["status"] == "SUCCEEDED" else None

        calc = await wait_until(
            finished, boot + pi_deadline(samples), "the job to finish after restart", second
        )
        assert calc["attempts"] == 2  # killed mid-run, run again from the start
        await graphql.close()
    finally:
        api.stop()
        if second is not None:
            second.stop()
