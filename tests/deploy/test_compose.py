"""docker-compose.yml, deploy/env.example, the Dockerfile, Prometheus and Grafana."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    DEPLOY,
    ROOT,
    THIRD_PARTY_ENV,
    env_file_entries,
    exported_metric_names,
)

APP_SERVICES = ("migrate", "api", "worker")
EXPECTED_SERVICES = {
    "postgres",
    "redis",
    "migrate",
    "api",
    "worker",
    "worker-gpu",  # profile "gpu": started only with --profile gpu
    "nginx",
    "prometheus",
    "grafana",
}
# Images whose default user is not root (compose sets `user:` anyway).
NON_ROOT_IMAGES = ("nginxinc/nginx-unprivileged", "prom/prometheus", "grafana/grafana")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
PROMQL_BUILTINS = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): str(value) for key, value in env.items()}


def depends(service: dict[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in (service.get("depends_on") or {}).items()}


def test_all_services_present(compose: dict[str, Any]) -> None:
    assert set(services(compose)) == EXPECTED_SERVICES


def test_healthchecks_where_sensible(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if name == "migrate":
            assert "healthcheck" not in service  # one-shot: it completes instead
            assert service.get("restart") == "no"
            continue
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no health check"
        assert not check.get("disable"), name


def test_start_order(compose: dict[str, Any]) -> None:
    svc = services(compose)
    assert depends(svc["migrate"]) == {"postgres": "service_healthy"}
    for name in ("api", "worker"):
        assert depends(svc[name]) == {
            "migrate": "service_completed_successfully",
            "postgres": "service_healthy",
            "redis": "service_healthy",
        }, name
    assert depends(svc["nginx"]) == {"api": "service_healthy"}
    assert depends(svc["grafana"]) == {"prometheus": "service_healthy"}
    # Whatever is waited on as healthy has a health check.
    for name, service in svc.items():
        for target, condition in depends(service).items():
            assert target in svc, f"{name} depends on unknown {target}"
            if condition == "service_healthy":
                assert "healthcheck" in svc[target], f"{name} waits for {target} health"


def test_postgres_health_check_uses_tcp(compose: dict[str, Any]) -> None:
    test = " ".join(services(compose)["postgres"]["healthcheck"]["test"])
    assert "pg_isready" in test and "-h 127.0.0.1" in test


def test_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used: set[str] = set()
    for name, service in services(compose).items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/", "~")):
                assert (ROOT / source).exists() or "certs" in source, f"{name}: {source}"
                continue
            assert source in declared, f"{name} uses undeclared volume {source}"
            used.add(source)
    assert used == declared
    assert {"postgres-data", "redis-data", "prometheus-data", "grafana-data"} <= declared


def test_nothing_runs_as_root(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        user = str(service.get("user", ""))
        if not user:
            assert str(service.get("image", "")).startswith(NON_ROOT_IMAGES), name
            continue
        uid = user.split(":", 1)[0]
        assert uid not in {"root", "0"}, f"{name} runs as root"


def test_app_services(compose: dict[str, Any]) -> None:
    svc = services(compose)
    images = {svc[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1, "migrate, api and worker run the same image"
    for name in APP_SERVICES:
        service = svc[name]
        env = environment(service)
        assert env["CRUNCHQL_ENVIRONMENT"] == "production"
        assert env["CRUNCHQL_JWT_SECRET"].startswith("${CRUNCHQL_JWT_SECRET:?")
        assert (
            env["DATABASE_URL"].startswith("postgresql://")
            and "@postgres:5432/" in env["DATABASE_URL"]
        )
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert "./deploy/.env" in service["env_file"]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert svc["migrate"]["command"] == ["crunchql", "db", "upgrade"]
    api = svc["api"]["command"]
    assert api[:2] == ["crunchql", "serve"] and api[api.index("--port") + 1] == "8000"
    assert api[api.index("--host") + 1] == "0.0.0.0"  # noqa: S104 - inside the container
    assert svc["worker"]["command"][:2] == ["crunchql", "worker"]
    # Scalable with --scale worker=N: no fixed name, no published port.
    for name in ("worker", "api"):
        assert "container_name" not in svc[name] and "ports" not in svc[name], name
    for name in ("api", "worker"):
        assert environment(svc[name])["PROMETHEUS_MULTIPROC_DIR"]


def test_only_nginx_faces_the_world(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for port in service.get("ports") or []:
            if name != "nginx":
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"
    assert services(compose)["nginx"]["ports"] == ["80:8080", "443:8443"]


def test_the_api_believes_forwarded_headers_from_nginx_only(compose: dict[str, Any]) -> None:
    """X-Forwarded-For decides the address rate limits count: only nginx may set it."""
    import ipaddress

    svc = services(compose)
    trusted = environment(svc["api"])["FORWARDED_ALLOW_IPS"]
    assert "*" not in trusted
    ((network, spec),) = svc["nginx"]["networks"].items()
    nginx_address = ipaddress.ip_address(spec["ipv4_address"])
    assert [ipaddress.ip_address(item.strip()) for item in trusted.split(",")] == [nginx_address]
    # nginx's address is fixed inside the network's own subnet, and the API is on it.
    (subnet,) = (item["subnet"] for item in compose["networks"][network]["ipam"]["config"])
    assert nginx_address in ipaddress.ip_network(subnet)
    assert network in svc["api"]["networks"]
    # Nobody else is on the edge network.
    on_edge = {name for name, service in svc.items() if network in (service.get("networks") or [])}
    assert on_edge == {"api", "nginx"}


def test_env_names_are_real_settings(compose: dict[str, Any], settings_env: dict[str, str]) -> None:
    known = set(settings_env) | THIRD_PARTY_ENV
    for name in APP_SERVICES:
        for key in environment(services(compose)[name]):
            assert key in known, f"compose {name}: {key} is not a setting"
    entries = env_file_entries(DEPLOY / "env.example")
    for key in entries:
        assert key in known, f"env.example: {key} is not a setting"
    # Every ${VAR} compose interpolates is documented in env.example.
    text = (ROOT / "docker-compose.yml").read_text("utf-8")
    for var in set(INTERPOLATION.findall(text)):
        assert var in entries, f"${{{var}}} is not in deploy/env.example"


def test_env_example_has_no_secrets() -> None:
    entries = env_file_entries(DEPLOY / "env.example")
    for key in ("POSTGRES_PASSWORD", "CRUNCHQL_JWT_SECRET", "GRAFANA_ADMIN_PASSWORD"):
        value, commented = entries[key]
        assert value == "" and not commented, f"{key} must be left empty in the example"
    for key, (value, _commented) in entries.items():
        if re.search(r"SECRET|PASSWORD|DSN", key) and value:
            assert "example" in value or "publickey" in value, key


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text("utf-8")
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) >= 2, "multi-stage"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    final = text[text.rindex("\nFROM ") :]
    assert "COPY --from=builder /opt/venv /opt/venv" in final
    user = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert user and user[-1].split(":")[0] not in {"root", "0"}
    assert "NUMBA_CACHE_DIR=" in final
    warm = final.index("warm_up_all()")
    assert final.index("USER ") < warm, "kernels are warmed as the runtime user"
    assert (DEPLOY / "entrypoint.sh").read_text("utf-8").startswith("#!/bin/sh")


def test_prometheus_targets_match_compose(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text("utf-8"))
    svc = services(compose)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"crunchql-api", "crunchql-worker"} <= set(jobs)
    targets: set[tuple[str, int]] = set()
    for name in ("crunchql-api", "crunchql-worker"):
        job = jobs[name]
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sd in job.get("dns_sd_configs", []):
            targets.update((host, int(sd["port"])) for host in sd["names"])
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets.add((host, int(port)))
    assert targets == {("api", 8000), ("worker", 9100)}
    for host, port in targets:
        exposed = {int(str(p).split("/")[0]) for p in svc[host].get("expose", [])}
        assert port in exposed, f"{host} does not expose {port}"


def promql_metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end() :].lstrip()
        word = match.group(0)
        if rest.startswith("(") or word in {"and", "or", "unless", "bool", "offset"}:
            continue
        if re.fullmatch(r"\d+[smhdwy]?|e\d*", word):
            continue
        names.add(word)
    return names


def test_promql_parser() -> None:
    assert promql_metric_names(
        'histogram_quantile(0.95, sum by (le, route) (rate(x_bucket{a="b"}[$__rate_interval])))'
    ) == {"x_bucket"}
    assert promql_metric_names("sum(a_total) / clamp_min(sum(b_total), 1e-9)") == {
        "a_total",
        "b_total",
    }


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (DEPLOY / "grafana" / "dashboards" / "crunchql.json").read_text("utf-8")
    )
    return data


def test_dashboard_uses_only_exported_metrics() -> None:
    exported = exported_metric_names()
    used: set[str] = set()
    panels = [panel for panel in dashboard()["panels"] if panel["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = promql_metric_names(target["expr"])
            assert names, target["expr"]
            unknown = names - exported - PROMQL_BUILTINS
            assert not unknown, f"{panel['title']}: {sorted(unknown)} not exported"
            used |= names
    # The dashboard shows every crunchql metric family.
    families = {name for name in exported if name.startswith("crunchql_")}
    bases = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in used}
    for name in families:
        assert re.sub(r"_(total|bucket|sum|count|created)$", "", name) in bases, name


def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    grafana = DEPLOY / "grafana" / "provisioning"
    datasource = yaml.safe_load((grafana / "datasources" / "prometheus.yml").read_text("utf-8"))
    uid = datasource["datasources"][0]["uid"]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    for panel in dashboard()["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid
    provider = yaml.safe_load((grafana / "dashboards" / "crunchql.yml").read_text("utf-8"))
    path = provider["providers"][0]["options"]["path"]
    mounts = [str(v) for v in services(compose)["grafana"]["volumes"]]
    assert any(m.startswith("./deploy/grafana/dashboards:" + path) for m in mounts)
    assert any(
        m.startswith("./deploy/grafana/provisioning:/etc/grafana/provisioning") for m in mounts
    )


def test_docs_list_every_setting(settings_env: dict[str, str]) -> None:
    docs = (ROOT / "docs" / "operations.md").read_text("utf-8")
    missing = [name for name in settings_env if f"`{name}`" not in docs]
    assert not missing, f"docs/operations.md does not describe {missing}"


@pytest.mark.parametrize("service", ["api", "worker"])
def test_stop_grace(compose: dict[str, Any], service: str) -> None:
    assert services(compose)[service].get("stop_grace_period")
