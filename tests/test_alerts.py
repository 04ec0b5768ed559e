"""The Prometheus alert rules and the Grafana dashboard (deploy/prometheus, deploy/grafana).

promtool (Debian's `prometheus` package; `make test` installs it) checks the rules and runs their
unit tests (alerts-test.yml: each alert fires on what it names, stays quiet otherwise). Then every
series a rule or a dashboard panel names is looked up in a real /metrics scrape of the running
system after a turn, so a renamed metric cannot leave a silent alert or an empty panel."""

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.sse import post_prompt, read_stream
from tests.waiting import wait_for

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts-test.yml"
DASHBOARD = DEPLOY / "grafana" / "turnstream.json"
SERIES = re.compile(r"\bturnstream_[a-z0-9_]+")
STORES = ("broker", "progress", "exec_cache", "auth_memo")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool comes from Debian's prometheus package: make test installs it (deploy/install-promtool.sh)"
    return path


def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    check = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run([promtool(), "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True,
                            timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_rules_cover_what_an_operator_must_hear_about():
    rules = {rule["alert"]: rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"]
             for rule in group["rules"]}
    named = {name: set(SERIES.findall(expr)) for name, expr in rules.items()}
    assert named == {
        "TurnstreamQueueRising": {"turnstream_queue_length"},
        "TurnstreamTurnsStalled": {"turnstream_turns_stalled"},
        "TurnstreamBreakerOpen": {"turnstream_redis_breaker_open"},
        "TurnstreamRedisDown": {"turnstream_redis_up"},
        "TurnstreamRedisEvictionPolicyWrong": {"turnstream_redis_policy_ok"},
        "TurnstreamRedisEvictingKeys": {"turnstream_redis_evicted_keys_total"},
        "TurnstreamSSEClientsCut": {"turnstream_sse_clients_cut_total"},
    }
    tested = {case["alertname"] for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
              for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert tested == set(rules), "every alert has a unit test that makes it fire"


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.fixture(scope="module")
def scraped(base_url) -> dict[str, set[tuple]]:
    """Sample names in /metrics after one turn with tool calls, each with the label sets seen."""
    body = post_prompt(base_url, "s" + uuid.uuid4().hex[:12], "What is the weather in Paris?").json()
    assert read_stream(base_url, body["stream_url"])[-1].type == "done"
    # Guard counts reach the ops store every FLUSH_S and /metrics reads a snapshot shared for a
    # moment: scrape until the turn's guard lookups show, as a Prometheus scrape would next time.
    last: dict[str, set[tuple]] = {}

    def scrape() -> dict[str, set[tuple]] | None:
        nonlocal last
        response = httpx.get(f"{base_url}/metrics", timeout=30)
        assert response.status_code == 200
        last = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                last.setdefault(sample.name, set()).add(tuple(sorted(sample.labels.items())))
        return last if "turnstream_guard_ratio" in last else None

    try:
        return wait_for(scrape, timeout=15, interval=0.5)
    except AssertionError:
        return last  # the tests below name what is missing


def test_every_series_the_rules_name_is_in_metrics(scraped):
    named = set(SERIES.findall(ALERTS.read_text()))
    assert named and named <= set(scraped), f"not in /metrics: {sorted(named - set(scraped))}"


def test_every_series_the_dashboard_queries_is_in_metrics(scraped):
    named = {name for query in dashboard_queries() for name in SERIES.findall(query)}
    assert len(named) >= 20
    assert named <= set(scraped), f"not in /metrics: {sorted(named - set(scraped))}"


def test_breaker_and_stall_series_exist_at_zero_before_anything_fails(scraped):
    """An alert on a series that appears only at the first failure cannot tell 'fine' from 'no data'."""
    for name in ("turnstream_redis_breaker_open", "turnstream_redis_failures_total",
                 "turnstream_redis_breaker_trips_total", "turnstream_redis_breaker_rejected_total"):
        stores = {dict(labels).get("store") for labels in scraped[name]}
        assert stores >= set(STORES), f"{name}: only {stores}"
    assert "turnstream_turns_stalled" in scraped
