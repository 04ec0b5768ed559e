"""The distributed topologies in deploy/ parse and point where they say: the compose override puts
the broker behind three sentinels that watch the broker service; the Kubernetes kustomization
renders objects the Kubernetes schemas accept, runs progress, the exec cache and the auth memo each on
a Cluster of its own (progress with a replica per master) and points the app at those pods."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from shared import redis_urls
from shared.cli import processes
from shared.defaults import STORE_URL_ENV
from tests.test_deploy import REDIS_BASE_MI, maxmemory_mi, memory_mi

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_compose_override_runs_the_broker_behind_sentinel():
    base = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    override = yaml.safe_load((DEPLOY / "docker-compose.sentinel.yml").read_text())["services"]
    sentinels = [name for name in override if name.startswith("sentinel-")]
    assert len(sentinels) == 3
    for name in sentinels:
        script = override[name]["command"][-1]
        assert "sentinel monitor turnstream-broker broker 6379 2" in script and "--sentinel" in script
    assert override["broker-replica"]["command"][2:5] == ["--replicaof", "broker", "6379"]
    apps = [name for name, service in base.items() if "BROKER_REDIS_URL" in str(service.get("environment", ""))
            or service.get("build")]
    for name in apps:
        target = redis_urls.parse(override[name]["environment"]["BROKER_REDIS_URL"])
        assert target.sentinel and target.master == "turnstream-broker"
        assert {host for host, _ in target.hosts} == set(sentinels)


def test_compose_override_validates_against_the_compose_spec():
    import jsonschema

    from tests.test_deploy import compose_schema

    schema = compose_schema()
    override = yaml.safe_load((DEPLOY / "docker-compose.sentinel.yml").read_text())
    errors = [e.message for e in jsonschema.validators.validator_for(schema)(schema).iter_errors(override)]
    assert errors == []


# Which store runs on a Cluster in deploy/cluster, with how many replicas per master (README, "Deploying").
CLUSTER_STORES = {"progress": 1, "exec_cache": 0, "auth_memo": 0}


@pytest.fixture(scope="module")
def cluster_overlay() -> list[dict]:
    import kubernetes_validate

    from tests.test_deploy import KUBECTL

    result = subprocess.run([str(KUBECTL), "kustomize", str(DEPLOY / "cluster")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    return docs


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


@pytest.mark.parametrize("store", CLUSTER_STORES)
def test_k8s_cluster_overlay_runs_the_store_on_its_own_cluster_and_points_the_app_at_its_pods(cluster_overlay, store):
    name = store.replace("_", "-") + "-cluster"
    replicas = CLUSTER_STORES[store]
    statefulset = by_kind(cluster_overlay, "StatefulSet")[name]
    assert statefulset["spec"]["serviceName"] == name
    assert by_kind(cluster_overlay, "Service")[name]["spec"]["clusterIP"] == "None"
    pods = 3 * (1 + replicas)
    assert statefulset["spec"]["replicas"] == pods
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert "--cluster-enabled yes" in container["args"][0]
    conf_mount = next(m for m in container["volumeMounts"] if m["name"] == "conf")
    assert conf_mount["subPath"] == processes.CONF_FILES[store]  # the store's own eviction and memory rules
    # Each pod holds its conf's maxmemory, so the base's memory rule holds per pod.
    conf = DEPLOY / "redis" / processes.CONF_FILES[store]
    forks = re.search(r"^appendonly yes$", conf.read_text(), re.M) is not None
    needed = maxmemory_mi(conf) * (2 if forks else 1.5) + REDIS_BASE_MI
    assert memory_mi(container["resources"]["limits"]["memory"]) >= needed
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]
    create = by_kind(cluster_overlay, "Job")[f"{name}-create"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert f"--cluster-replicas {replicas}" in create
    assert f"for i in {' '.join(str(i) for i in range(pods))};" in create  # waits for and joins every pod
    target = redis_urls.parse(by_kind(cluster_overlay, "ConfigMap")["turnstream-topology"]["data"][STORE_URL_ENV[store]])
    assert target.cluster
    assert all(re.fullmatch(rf"{name}-[0-{pods - 1}]\.{name}", host) for host, _ in target.hosts), target.hosts


def test_k8s_cluster_overlay_leaves_the_broker_on_one_server(cluster_overlay):
    """kombu has no Cluster transport: the app refuses a cluster:// broker, so the overlay must not set one."""
    topology = by_kind(cluster_overlay, "ConfigMap")["turnstream-topology"]["data"]
    assert set(topology) == {STORE_URL_ENV[store] for store in CLUSTER_STORES}


def test_the_app_reads_the_topology_config_after_its_own():
    """So what deploy/cluster puts in turnstream-topology overrides turnstream-config's URLs."""
    for name in ("web.yaml", "workers.yaml", "flower.yaml"):
        for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()):
            if doc and doc["kind"] in ("Deployment", "StatefulSet"):
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    names = [source["configMapRef"]["name"] for source in container["envFrom"]]
                    assert names == ["turnstream-config", "turnstream-topology"], (name, names)
