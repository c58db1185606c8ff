"""deploy/k8s: probes, ports, security, resources, scaling on the real queue key."""

from __future__ import annotations

import re
import uuid
from typing import Any

import dramatiq
import pytest
import yaml

from crunchql.workers.broker import QUEUE_NAME, create_broker
from tests.conftest import REDIS_URL, require_service
from tests.deploy.conftest import DEPLOY, THIRD_PARTY_ENV

ACTOR_NAME = "calculation.run"  # workers.queues.ACTOR_NAME (that module imports the kernels)


def of_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == kind}


def pod_specs(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    specs = {}
    for doc in documents:
        if doc["kind"] in {"Deployment", "Job"}:
            specs[doc["metadata"]["name"]] = doc["spec"]["template"]["spec"]
    return specs


def test_expected_objects(k8s_documents: list[dict[str, Any]]) -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in k8s_documents}
    assert {
        ("Namespace", "crunchql"),
        ("ConfigMap", "crunchql-config"),
        ("Secret", "crunchql-secrets"),
        ("Deployment", "crunchql-api"),
        ("Service", "crunchql-api"),
        ("HorizontalPodAutoscaler", "crunchql-api"),
        ("Deployment", "crunchql-worker"),
        ("ScaledObject", "crunchql-worker"),
        ("Job", "crunchql-migrate"),
    } <= kinds
    for doc in k8s_documents:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "crunchql", doc["metadata"]["name"]


def test_non_root_and_resources(k8s_documents: list[dict[str, Any]]) -> None:
    images = set()
    for name, spec in pod_specs(k8s_documents).items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, name
        for container in spec["containers"]:
            images.add(container["image"])
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), (name, bound)
    assert len(images) == 1, "API, workers and migrations run one image"


def container_port(container: dict[str, Any], port: int | str) -> int:
    for item in container["ports"]:
        if port in (item.get("name"), item["containerPort"]):
            return int(item["containerPort"])
    raise AssertionError(f"{container['name']} has no port {port}")


def test_api_probes_and_ports(k8s_documents: list[dict[str, Any]]) -> None:
    api = of_kind(k8s_documents, "Deployment")["crunchql-api"]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    port = int(args[args.index("--port") + 1])
    assert args[args.index("--host") + 1] == "0.0.0.0"  # noqa: S104 - inside the pod
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container_port(container, container[probe]["httpGet"]["port"]) == port
    service = of_kind(k8s_documents, "Service")["crunchql-api"]
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    for item in service["spec"]["ports"]:
        assert container_port(container, item["targetPort"]) == port
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port
    hpa = of_kind(k8s_documents, "HorizontalPodAutoscaler")["crunchql-api"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "crunchql-api"
    assert hpa["spec"]["minReplicas"] >= 2


def test_worker_metrics_port(k8s_documents: list[dict[str, Any]]) -> None:
    worker = of_kind(k8s_documents, "Deployment")["crunchql-worker"]
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["crunchql", "worker"]
    probe = container["livenessProbe"]["httpGet"]
    assert container_port(container, probe["port"]) == 9100
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9100"
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > 30, "longer than the worker's 30 s shutdown timeout"


def test_migration_job(k8s_documents: list[dict[str, Any]]) -> None:
    job = of_kind(k8s_documents, "Job")["crunchql-migrate"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["crunchql", "db", "upgrade"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_env_names_are_real_settings(
    k8s_documents: list[dict[str, Any]], settings_env: dict[str, str]
) -> None:
    known = set(settings_env) | THIRD_PARTY_ENV
    config = of_kind(k8s_documents, "ConfigMap")["crunchql-config"]
    assert config["data"]["CRUNCHQL_ENVIRONMENT"] == "production"
    names = set(config["data"]) | set(
        of_kind(k8s_documents, "Secret")["crunchql-secrets"]["stringData"]
    )
    for spec in pod_specs(k8s_documents).values():
        for container in spec["containers"]:
            names.update(item["name"] for item in container.get("env", []))
    unknown = names - known
    assert not unknown, f"not settings: {sorted(unknown)}"


def scaled_object(k8s_documents: list[dict[str, Any]]) -> dict[str, Any]:
    return of_kind(k8s_documents, "ScaledObject")["crunchql-worker"]


def test_worker_scales_on_the_dramatiq_queue(k8s_documents: list[dict[str, Any]]) -> None:
    scaled = scaled_object(k8s_documents)
    assert scaled["spec"]["scaleTargetRef"]["name"] == "crunchql-worker"
    assert scaled["spec"]["minReplicaCount"] >= 1, "workers run the sweeper and every job"
    (trigger,) = scaled["spec"]["triggers"]
    broker = create_broker("redis://127.0.0.1:6379/0")  # no I/O until used
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == f"{broker.namespace}:{QUEUE_NAME}"


@pytest.mark.redis
def test_queue_key_on_real_redis(k8s_documents: list[dict[str, Any]]) -> None:
    """One message enqueued with our broker lands in the list KEDA watches; only what
    this test created is removed afterwards."""
    require_service("Redis", REDIS_URL, 6379)
    import redis

    list_name = scaled_object(k8s_documents)["spec"]["triggers"][0]["metadata"]["listName"]
    broker = create_broker(REDIS_URL)
    client = redis.Redis.from_url(REDIS_URL)
    existed = {key for key in (list_name, f"{list_name}.msgs") if client.exists(key)}
    message: dramatiq.Message[None] = dramatiq.Message(
        queue_name=QUEUE_NAME,
        actor_name=ACTOR_NAME,
        args=(str(uuid.uuid4()),),
        kwargs={},
        options={},
    )
    # The broker keys the message by its own id, kept in the options of the copy.
    redis_id = broker.enqueue(message).options["redis_message_id"]
    try:
        ids = [item.decode() for item in client.lrange(list_name, 0, -1)]
        assert redis_id in ids
        assert client.hexists(f"{list_name}.msgs", redis_id)
    finally:
        client.lrem(list_name, 0, redis_id)
        client.hdel(f"{list_name}.msgs", redis_id)
        client.zrem(f"{broker.namespace}:__heartbeats__", broker.broker_id)
        for key in {list_name, f"{list_name}.msgs"} - existed:
            if client.exists(key) and not (client.llen(key) if key == list_name else 1):
                client.delete(key)
        broker.close()
        client.close()


def test_forwarded_headers_are_believed_from_the_ingress_only(
    k8s_documents: list[dict[str, Any]],
) -> None:
    """Never "*": addresses or networks (the ingress controller's), nothing else."""
    import ipaddress

    config = of_kind(k8s_documents, "ConfigMap")["crunchql-config"]["data"]
    trusted = [item.strip() for item in config["FORWARDED_ALLOW_IPS"].split(",")]
    assert trusted and "*" not in trusted
    for item in trusted:
        ipaddress.ip_network(item, strict=True)  # an address or a CIDR, or it raises


def test_ingress_terminates_tls_and_routes_only_public_paths(
    k8s_documents: list[dict[str, Any]],
) -> None:
    """The finding: the Kubernetes manifests shipped no ingress (no TLS, no limits)."""
    ingress = of_kind(k8s_documents, "Ingress")["crunchql-api"]
    spec = ingress["spec"]
    hosts = {host for tls in spec["tls"] for host in tls["hosts"]}
    assert all(tls["secretName"] for tls in spec["tls"])
    assert {rule["host"] for rule in spec["rules"]} <= hosts  # every routed host has TLS
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
    services = of_kind(k8s_documents, "Service")
    paths = [path for rule in spec["rules"] for path in rule["http"]["paths"]]
    assert {path["path"] for path in paths} == {"/graphql", "/graphiql-assets", "/", "/console"}
    for path in paths:
        backend = path["backend"]["service"]
        port_names = {port["name"] for port in services[backend["name"]]["spec"]["ports"]}
        assert backend["port"]["name"] in port_names


def test_ingress_applies_the_same_limits_as_nginx(k8s_documents: list[dict[str, Any]]) -> None:
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text("utf-8")
    rates = {int(rate) for rate in re.findall(r"limit_req_zone .*rate=(\d+)r/s;", conf)}
    bursts = {int(burst) for burst in re.findall(r"limit_req zone=\S+ burst=(\d+)", conf)}
    connections = re.search(r"limit_conn per_address (\d+);", conf)
    body = re.search(r"client_max_body_size (\w+);", conf)
    assert rates and bursts and connections and body
    annotations = of_kind(k8s_documents, "Ingress")["crunchql-api"]["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    rps = int(annotations[prefix + "limit-rps"])
    assert rps in rates
    assert rps * int(annotations[prefix + "limit-burst-multiplier"]) in bursts
    assert annotations[prefix + "limit-connections"] == connections.group(1)
    assert annotations[prefix + "proxy-body-size"] == body.group(1)
    assert int(annotations[prefix + "proxy-read-timeout"]) >= 3600  # subscriptions


def test_kustomization_applies_the_ingress() -> None:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text("utf-8"))
    assert "ingress.yaml" in kustomization["resources"]
