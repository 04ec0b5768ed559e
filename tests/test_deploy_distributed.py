"""The distributed topologies in deploy/ parse and point where they say: the compose override puts
the broker behind three sentinels that watch the broker service; the Kubernetes kustomization
renders objects the Kubernetes schemas accept and points progress at the Cluster pods it runs."""

import re
import subprocess
from pathlib import Path

import yaml

from shared import redis_urls

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


def test_k8s_cluster_kustomization_renders_valid_objects_and_points_progress_at_its_pods():
    import kubernetes_validate

    from tests.test_deploy import KUBECTL

    result = subprocess.run([str(KUBECTL), "kustomize", str(DEPLOY / "cluster")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    by_kind = {doc["kind"]: doc for doc in docs}
    statefulset, job = by_kind["StatefulSet"], by_kind["Job"]
    assert statefulset["spec"]["replicas"] == 6 and statefulset["spec"]["serviceName"] == "progress-cluster"
    assert "--cluster-replicas 1" in job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    topology = by_kind["ConfigMap"]
    assert topology["metadata"]["name"] == "turnstream-topology"
    target = redis_urls.parse(topology["data"]["PROGRESS_REDIS_URL"])
    assert target.cluster
    assert all(re.fullmatch(r"progress-cluster-[0-5]\.progress-cluster", host) for host, _ in target.hosts)


def test_the_app_reads_the_topology_config_after_its_own():
    """So what deploy/cluster puts in turnstream-topology overrides turnstream-config's URLs."""
    for name in ("web.yaml", "workers.yaml", "flower.yaml"):
        for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()):
            if doc and doc["kind"] in ("Deployment", "StatefulSet"):
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    names = [source["configMapRef"]["name"] for source in container["envFrom"]]
                    assert names == ["turnstream-config", "turnstream-topology"], (name, names)
