"""The distributed topologies in deploy/ parse and point where they say: the compose override puts
the broker behind three sentinels that watch the broker service, the Kubernetes overlay moves
progress onto a Cluster whose pods its URL names, and removes the single progress server."""

import re
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


def test_k8s_overlay_moves_progress_onto_a_cluster():
    overlay = yaml.safe_load((DEPLOY / "cluster" / "kustomization.yaml").read_text())
    assert "../" in overlay["resources"]
    docs = list(yaml.safe_load_all((DEPLOY / "cluster" / "progress-cluster.yaml").read_text()))
    statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
    assert statefulset["spec"]["replicas"] == 6 and statefulset["spec"]["serviceName"] == "progress-cluster"
    job = next(d for d in docs if d["kind"] == "Job")
    assert "--cluster-replicas 1" in job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    url = next(p for p in overlay["patches"] if "PROGRESS_REDIS_URL" in p["patch"])["patch"]
    target = redis_urls.parse(re.search(r"value: (\S+)", url).group(1))
    assert target.cluster
    assert all(re.fullmatch(r"progress-cluster-[0-5]\.progress-cluster", host) for host, _ in target.hosts)
    deleted = {(p["target"]["kind"], p["target"]["name"]) for p in overlay["patches"] if "$patch: delete" in p["patch"]}
    assert deleted == {("Deployment", "progress"), ("Service", "progress")}
