from __future__ import annotations

import pytest
from pydantic import ValidationError

from crunchql.core.settings import Settings


def make(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_defaults_are_the_embedded_development_setup() -> None:
    settings = make()
    assert settings.is_sqlite and settings.database_url.startswith("sqlite+aiosqlite:///")
    assert settings.redis_url is None
    assert settings.generated_secret and len(settings.jwt_secret) >= 32
    assert settings.introspection_enabled


def test_each_process_gets_its_own_generated_secret() -> None:
    assert make().jwt_secret != make().jwt_secret


@pytest.mark.parametrize("url", ["postgres://u:p@db:5432/app", "postgresql://u:p@db:5432/app"])
def test_platform_database_urls_use_asyncpg(url: str) -> None:
    assert make(database_url=url).database_url == "postgresql+asyncpg://u:p@db:5432/app"


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db/app")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("CRUNCHQL_RATE_LIMITS", "off")
    monkeypatch.setenv("CRUNCHQL_CORS_ORIGINS", "https://a.example, https://b.example")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_url == "postgresql+asyncpg://u@db/app"
    assert settings.redis_url == "redis://cache:6379/0"
    assert settings.rate_limits is False
    assert settings.cors_origins == ["https://a.example", "https://b.example"]


PRODUCTION = {"environment": "production", "database_url": "postgresql://u@db/app"}


def test_production_refuses_a_missing_secret() -> None:
    with pytest.raises(ValidationError, match="CRUNCHQL_JWT_SECRET must be set"):
        make(**PRODUCTION)


def test_production_refuses_a_short_secret() -> None:
    with pytest.raises(ValidationError, match="at least 32"):
        make(**PRODUCTION, jwt_secret="too-short")


def test_production_refuses_sqlite() -> None:
    with pytest.raises(ValidationError, match="production needs PostgreSQL"):
        make(environment="production", jwt_secret="k" * 48)


def test_production_with_rate_limits_off_warns() -> None:
    with pytest.warns(UserWarning, match="not rate limited"):
        make(**PRODUCTION, jwt_secret="k" * 48, rate_limits=False)


def test_production_defaults_harden_the_api() -> None:
    settings = make(**PRODUCTION, jwt_secret="k" * 48)
    assert not settings.introspection_enabled
    assert settings.json_logs
    assert "k" * 48 not in repr(settings)


def test_production_refuses_second_granularity_crons() -> None:
    with pytest.raises(ValidationError, match="SCHEDULER_SECONDS_FIELD is for tests"):
        make(**PRODUCTION, jwt_secret="k" * 48, scheduler_seconds_field=True)
