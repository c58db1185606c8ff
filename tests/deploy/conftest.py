"""Fixtures for the deployment checks: the parsed files and the names they may use."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from crunchql.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# Variables that are not crunchql settings but are read by something we run.
THIRD_PARTY_ENV = frozenset(
    {
        "POSTGRES_USER",  # postgres image, and compose builds DATABASE_URL from them
        "POSTGRES_PASSWORD",
        "POSTGRES_DB",
        "GRAFANA_ADMIN_PASSWORD",  # compose passes it to Grafana
        "FORWARDED_ALLOW_IPS",  # Uvicorn, via `crunchql serve`
        "PROMETHEUS_MULTIPROC_DIR",  # prometheus_client
        "NUMBA_NUM_THREADS",  # numba
        "NUMBA_CACHE_DIR",
    }
)
# Fields that are state, not configuration.
NOT_SETTINGS = frozenset({"generated_secret"})


def setting_env_names() -> dict[str, str]:
    """Environment name -> field name, for every field of Settings."""
    prefix = Settings.model_config.get("env_prefix", "")
    names: dict[str, str] = {}
    for field_name, field in Settings.model_fields.items():
        if field_name in NOT_SETTINGS:
            continue
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if isinstance(choice, str):
                    names[choice.upper()] = field_name
        elif isinstance(alias, str):
            names[alias.upper()] = field_name
        else:
            names[f"{prefix}{field_name}".upper()] = field_name
    return names


def exported_metric_names() -> set[str]:
    """Every series name observability.metrics exposes (counter x -> x_total, histograms ...)."""
    from crunchql.observability import metrics

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


ENV_LINE = re.compile(r"^\s*#?\s*([A-Z][A-Z0-9_]*)=(.*)$")


def env_file_entries(path: Path) -> dict[str, tuple[str, bool]]:
    """NAME -> (value, commented out) for NAME=value lines, including `# NAME=value`."""
    entries: dict[str, tuple[str, bool]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = ENV_LINE.match(line)
        if match:
            entries[match.group(1)] = (match.group(2), line.lstrip().startswith("#"))
    return entries


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text("utf-8"))
    return data


@pytest.fixture(scope="session")
def k8s_documents() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text("utf-8")):
            if doc and doc.get("kind") != "Kustomization":
                documents.append(doc)
    return documents


@pytest.fixture(scope="session")
def settings_env() -> dict[str, str]:
    return setting_env_names()
