"""/healthz and /readyz: readiness is what this API process needs (database, Redis);
worker presence is reported, never a reason to be unready."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crunchql.db.engine import create_engine, create_session_factory, unit_of_work
from crunchql.db.repositories import WorkerRepository
from crunchql.observability.metrics import REGISTRY
from tests.conftest import flush_redis, make_settings, running_app, truncate

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def _beat(database_url: str, worker_id: str, seen: datetime) -> None:
    engine = create_engine(database_url)
    async with unit_of_work(create_session_factory(engine)) as session:
        await WorkerRepository(session).beat(worker_id, "host", 1234, seen)
    await engine.dispose()


async def test_an_api_without_workers_is_ready_and_says_so(
    postgres_url: str, redis_url: str
) -> None:
    await truncate(postgres_url)
    await flush_redis(redis_url)
    settings = make_settings(
        database_url=postgres_url, redis_url=redis_url, worker_stale_seconds=30
    )
    async with running_app(settings) as (_app, client):
        response = await client.http.get("/readyz")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "ready"
        assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"]
        assert "workers" not in body["checks"]  # presence is not a readiness check
        assert body["workers"] == {"embedded": False, "alive": 0, "gpu": 0}
        assert REGISTRY.get_sample_value("crunchql_workers_alive") == 0
        # Users can still sign up and read their (queued) work with no worker anywhere.
        client.token = (await client.register())["accessToken"]
        listing = await client.execute("{ calculations { edges { node { id } } } }")
        assert "errors" not in listing, listing

        now = datetime.now(UTC)
        await _beat(postgres_url, "w1", now)
        await _beat(postgres_url, "w2", now - timedelta(seconds=5))
        await _beat(postgres_url, "gone", now - timedelta(seconds=120))  # stale
        response = await client.http.get("/readyz")
        assert response.status_code == 200
        assert response.json()["workers"] == {"embedded": False, "alive": 2, "gpu": 0}
        assert REGISTRY.get_sample_value("crunchql_workers_alive") == 2
    await truncate(postgres_url)
    await flush_redis(redis_url)


async def test_embedded_mode_runs_calculations_itself(sqlite_url: str) -> None:
    async with running_app(make_settings(database_url=sqlite_url)) as (_app, client):
        response = await client.http.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert set(body["checks"]) == {"database"}
    assert body["workers"] == {"embedded": True, "alive": None}


async def test_healthz_answers(sqlite_url: str) -> None:
    async with running_app(make_settings(database_url=sqlite_url)) as (_app, client):
        response = await client.http.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
