"""The compose file and the Kubernetes manifests parse, and everything they name exists: services,
config maps, conf files, queues, and every environment variable is one the code reads."""

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from shared.celery_config import queues
from shared.cli import processes
from shared.settings import Settings
from shared.tracing import STANDARD_ENV

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ROLE_URLS = ("BROKER_REDIS_URL", "PROGRESS_REDIS_URL", "EXEC_CACHE_REDIS_URL", "AUTH_MEMO_REDIS_URL")


def settings_env_names() -> set[str]:
    """Every variable Settings reads: its aliases, or TURNSTREAM_<FIELD>."""
    prefix = Settings.model_config["env_prefix"]
    names = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names |= set(alias.choices) if alias is not None else {f"{prefix}{field_name}".upper()}
    return names


def known_env() -> set[str]:
    gunicorn = re.findall(r'os\.environ\.get\("([A-Z0-9_]+)"', (DEPLOY / "gunicorn.conf.py").read_text())
    return settings_env_names() | set(gunicorn) | set(STANDARD_ENV)


def is_worker(command: list[str]) -> bool:
    return command[:4] == ["celery", "-A", "workers", "worker"] or command[:2] == ["turnstream", "worker"]


def queue_option(command: list[str]) -> set[str]:
    """The queues a worker command consumes: its -Q, or those `turnstream worker KIND` picks."""
    if command[:2] == ["turnstream", "worker"]:
        return set(processes.worker_specs(Settings().reasoner)[command[2]].queues.split(","))
    if "-Q" not in command:
        return set()
    return set(command[command.index("-Q") + 1].split(","))


def test_known_env_covers_settings_and_standard_variables():
    names = known_env()
    assert {"BROKER_REDIS_URL", "TURNSTREAM_SECRET", "TURNSTREAM_TASK_TIME_LIMIT_S", "FLOWER_BASIC_AUTH",
            "PROMETHEUS_MULTIPROC_DIR", "WEB_CONCURRENCY", "OTEL_EXPORTER_OTLP_ENDPOINT"} <= names
    assert "TURNSTREAM_NO_SUCH_THING" not in names


# --- docker compose -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_services_and_references_exist(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for variable, value in (service.get("environment") or {}).items():
            assert variable in known_env(), f"{name}: {variable} is not read by the code"
            if variable in ROLE_URLS:
                assert urlsplit(value).hostname in services, f"{name}: {variable} points at no service"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).is_file(), f"{name}: {source} does not exist"
    interpolated = set(re.findall(r"\$\{([A-Z0-9_]+)", (DEPLOY / "docker-compose.yml").read_text()))
    assert interpolated <= known_env()


def test_compose_runs_every_role_web_workers_per_queue_and_flower(compose):
    services = compose["services"]
    mounted = {volume.split(":")[0].removeprefix("./redis/")
               for service in services.values() for volume in service.get("volumes", [])}
    assert set(processes.CONF_FILES.values()) <= mounted, "every Redis role runs with its conf"
    web = services["web"]["command"]
    assert web[0] == "gunicorn" and "deploy/gunicorn.conf.py" in web
    assert 'worker_class = "gevent"' in (DEPLOY / "gunicorn.conf.py").read_text()
    consumed: dict[str, str] = {}
    for name, service in services.items():
        command = service.get("command", [])
        if is_worker(command):
            assert queue_option(command), f"{name} names its queue"
            consumed.update({queue: name for queue in queue_option(command)})
            assert service["deploy"]["replicas"] >= 1
            assert int(service["stop_grace_period"].rstrip("s")) > Settings().task_time_limit_s
    assert set(consumed) == set(queues()) == {"discover", "llm", "tools"}
    assert services["flower"]["command"][:2] == ["turnstream", "flower"]
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]


# --- Kubernetes -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kustomization() -> dict:
    return yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def manifests(kustomization) -> list[dict]:
    docs = []
    for resource in kustomization["resources"]:
        path = DEPLOY / resource
        assert path.is_file(), f"kustomization lists missing {resource}"
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def by_kind(manifests: list[dict], *kinds: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in manifests if doc["kind"] in kinds}


def generated_config_maps(kustomization: dict) -> dict[str, set[str]]:
    maps = {}
    for generator in kustomization.get("configMapGenerator", []):
        keys = set()
        for entry in generator["files"]:
            key, _, source = entry.partition("=")
            assert (DEPLOY / (source or key)).is_file(), f"{generator['name']}: {source or key} does not exist"
            keys.add(key)
        maps[generator["name"]] = keys
    return maps


def test_k8s_documents_are_well_formed(manifests):
    for doc in manifests:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc


def test_k8s_config_and_env_reference_only_what_exists(manifests, kustomization):
    config_maps = {name: set(doc.get("data", {})) for name, doc in by_kind(manifests, "ConfigMap").items()}
    config_maps.update(generated_config_maps(kustomization))
    service_names = set(by_kind(manifests, "Service"))
    for name, doc in by_kind(manifests, "ConfigMap").items():
        for variable, value in doc.get("data", {}).items():
            assert variable in known_env(), f"ConfigMap {name}: {variable} is not read by the code"
            if variable in ROLE_URLS:
                assert urlsplit(value).hostname in service_names, f"{variable} points at no Service"
    for name, workload in by_kind(manifests, "Deployment", "StatefulSet").items():
        pod = workload["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items(), f"{name}: selector"
        for volume in pod["spec"].get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, f"{name}: unknown ConfigMap"
        for container in pod["spec"]["containers"]:
            command = " ".join(container.get("command", []))
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps, f"{name}: unknown ConfigMap"
            for variable in container.get("env", []):
                referenced = f"$({variable['name']})" in command
                assert variable["name"] in known_env() or referenced, f"{name}: {variable['name']} is unused"
                secret = variable.get("valueFrom", {}).get("secretKeyRef")
                if secret:
                    assert secret["key"] in known_env()
            for mount in container.get("volumeMounts", []):
                if "subPath" in mount:
                    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
                    assert mount["subPath"] in config_maps[volume["configMap"]["name"]], f"{name}: {mount}"


def test_k8s_services_select_a_workload_and_its_port(manifests):
    workloads = by_kind(manifests, "Deployment", "StatefulSet")
    for name, service in by_kind(manifests, "Service").items():
        selector = service["spec"]["selector"]
        targets = [w for w in workloads.values()
                   if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert targets, f"Service {name} selects nothing"
        ports = {p["name"] for c in targets[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name}: no container port {port['targetPort']}"
    for role in ("broker", "progress", "exec-cache", "auth-memo", "web", "flower"):
        assert role in by_kind(manifests, "Service")


def test_k8s_workers_per_queue_outlive_their_longest_task(manifests):
    deployments = by_kind(manifests, "Deployment")
    config = by_kind(manifests, "ConfigMap")["turnstream-config"]["data"]
    limit = int(config.get("TURNSTREAM_TASK_TIME_LIMIT_S", Settings().task_time_limit_s))
    consumed = {}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        command = pod["containers"][0]["command"]
        if is_worker(command):
            consumed.update({queue: name for queue in queue_option(command)})
            assert pod["terminationGracePeriodSeconds"] > limit, f"{name} is killed mid-task"
    assert set(consumed) == set(queues())


def test_keda_scales_the_tool_workers_on_their_queue(manifests):
    scaled = by_kind(manifests, "ScaledObject")["worker-tools"]
    target = scaled["spec"]["scaleTargetRef"]["name"]
    deployment = by_kind(manifests, "Deployment")[target]
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis"
    queue = trigger["metadata"]["listName"]
    assert queue == "tools" and queue in queues()
    assert queue in queue_option(deployment["spec"]["template"]["spec"]["containers"][0]["command"])
    host = trigger["metadata"]["address"].split(":")[0].split(".")[0]
    assert host == "broker" and host in by_kind(manifests, "Service")
    assert int(trigger["metadata"]["listLength"]) >= 1

