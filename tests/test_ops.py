"""The admin /ops page and /metrics, against the real stack (a redis-server per store, a worker, gunicorn)."""

import re
import time
import uuid
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse
from prometheus_client.parser import text_string_to_metric_families

from shared import turns
from shared.defaults import STORES
from shared.guards import stats
from shared.identity import Principal, issue_stream_token
from shared.vocabulary import DONE, RUNNING
from tests.sse import bearer, post_prompt, read_stream

README = Path(__file__).resolve().parent.parent / "README.md"
ADMIN = ("admin",)


def eventually(check, timeout: float = 20.0, interval: float = 0.3):
    """Poll `check` until it returns something truthy (the ops snapshot is shared for a couple of seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def ops_snapshot(base_url: str) -> dict:
    response = httpx.get(f"{base_url}/ops/snapshot", headers=bearer(roles=ADMIN), timeout=20)
    assert response.status_code == 200, response.text
    return response.json()


def test_ops_refuses_anyone_but_an_admin(base_url):
    assert httpx.get(f"{base_url}/ops", timeout=10).status_code == 401
    analyst = httpx.get(f"{base_url}/ops", headers=bearer(roles=("analyst",)), timeout=10)
    assert analyst.status_code == 403
    assert analyst.json()["error"] == "forbidden"
    token = bearer(roles=("analyst",))["Authorization"].split()[1]
    assert httpx.get(f"{base_url}/ops", params={"token": token}, timeout=10).status_code == 403
    assert httpx.get(f"{base_url}/ops/snapshot", headers=bearer(roles=("analyst",)), timeout=10).status_code == 403
    assert httpx.get(f"{base_url}/ops/stream", params={"token": token}, timeout=10).status_code == 403


def test_ops_page_shows_every_redis_store_workers_and_queues(base_url, stack):
    response = httpx.get(f"{base_url}/ops", headers=bearer(roles=ADMIN), timeout=20)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    for store, policy in (("broker", "noeviction"), ("progress", "noeviction"), ("exec_cache", "allkeys-lru"),
                         ("auth_memo", "volatile-ttl")):
        row = re.search(rf'<tr data-store="{store}" class="up">(.*?)</tr>', page, re.S)
        assert row, f"no live row for {store}"
        assert f"127.0.0.1:{stack.ports[store]}" in row.group(1)
        assert f"{policy} — matches the store" in row.group(1)
        assert re.search(r"<td>[\d.]+ ms</td>", row.group(1)), "ping latency shown"
    assert int(re.search(r'<span id="workers-online">(\d+)</span>', page).group(1)) >= 1
    assert '<th scope="row">llm</th>' in page and '<th scope="row">tools</th>' in page


def test_ops_snapshot_reports_memory_evictions_and_clients_per_store(base_url, stack):
    rows = {row["store"]: row for row in ops_snapshot(base_url)["redis"]}
    assert list(rows) == list(STORES)
    for store in STORES:
        info = stack.client(store).info()
        row = rows[store]
        assert row["up"] and row["policy_ok"]
        assert row["maxmemory"] == info["maxmemory"] > 0
        assert row["evicted_keys"] == info["evicted_keys"]
        assert row["used_memory"] > 0 and row["connected_clients"] >= 1


def test_ops_lists_a_turn_in_flight_with_its_step_until_it_is_final(base_url, stack):
    session_id, message_id = "ops" + uuid.uuid4().hex[:8], uuid.uuid4().hex
    owner = Principal(user="alice", tenant="acme", roles=("analyst",))
    turns.create_turn(session_id, message_id, owner, "held by the test, never enqueued")
    turns.update_turn(session_id, message_id, status=RUNNING, step="execute")

    def listed():
        items = ops_snapshot(base_url)["turns"]["data"]["items"]
        return [t for t in items if t["message_id"] == message_id]

    shown = eventually(listed)
    assert shown and shown[0]["step"] == "execute" and shown[0]["status"] == "running"

    turns.update_turn(session_id, message_id, status=DONE, answer="-")
    assert eventually(lambda: not listed())


def test_ops_counts_sse_clients_and_channel_subscribers(base_url):
    session_id, message_id = "ops" + uuid.uuid4().hex[:8], uuid.uuid4().hex
    token = issue_stream_token(Principal(user="alice", tenant="acme", roles=()), session_id, message_id)
    channel = f"agent:progress:{{{session_id}:{message_id}}}"

    def seen():
        snap = ops_snapshot(base_url)
        subscribers = {c["channel"]: c["subscribers"] for c in snap["pubsub"]["data"]["channels"]}
        return snap if subscribers.get(channel) == 1 and snap["sse"]["data"]["clients"] >= 1 else None

    # A stream of a turn that never runs stays open (heartbeats only) until the client leaves.
    with httpx.Client(base_url=base_url, timeout=30) as client:
        with connect_sse(client, "GET", f"/stream/{session_id}/{message_id}", params={"token": token}) as source:
            assert source.response.status_code == 200
            assert eventually(seen), "the open stream shows up as an SSE client and a channel subscriber"


def test_ops_shows_guard_ratios_over_the_window(base_url):
    # Counts are over a sliding window, so earlier minutes may drop out while the test runs:
    # record far more than the module's own turns produce and look for at least that much.
    for _ in range(200):
        stats.record_exec_cache("hit")
    for _ in range(100):
        stats.record_exec_cache("miss")
    stats.record_auth_memo("hit", count=500)

    def grown():
        counts = ops_snapshot(base_url)["guards"]["data"]["counts"]
        return counts if counts["exec_cache"]["hit"] >= 200 else None

    counts = eventually(grown)
    assert counts["exec_cache"]["miss"] >= 100
    assert counts["auth_memo"]["hit"] >= 500
    with pytest.raises(ValueError):
        stats.record_exec_cache("maybe")


def test_ops_stream_pushes_rendered_panels(base_url):
    page = httpx.get(f"{base_url}/ops", headers=bearer(roles=ADMIN), timeout=20).text
    stream_url = re.search(r'data-stream="([^"]+)"', page).group(1).replace("&amp;", "&")
    with httpx.Client(base_url=base_url, timeout=30) as client:
        with connect_sse(client, "GET", stream_url) as source:
            assert source.response.status_code == 200
            first = next(sse for sse in source.iter_sse() if sse.event == "snapshot")
    assert '<table id="redis">' in first.data and 'data-store="auth_memo"' in first.data
    bad = httpx.get(f"{base_url}/ops/stream", params={"token": "not-a-token"}, timeout=10)
    assert bad.status_code == 403 and bad.json()["error"] == "forbidden"


def documented_series() -> list[str]:
    """Every series named in README's metrics table."""
    section = README.read_text().split("### Metrics", 1)[1].split("\n### ", 1)[0]
    return sorted(set(re.findall(r"`(turnstream_[a-z_]+)`", section)))


def test_metrics_exposes_every_documented_series_after_a_turn(base_url, session_id):
    body = post_prompt(base_url, session_id, "What is the weather in Paris?").json()
    assert read_stream(base_url, body["stream_url"])[-1].type == "done"

    def scrape() -> dict:
        response = httpx.get(f"{base_url}/metrics", timeout=20)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return {sample.name: sample for family in text_string_to_metric_families(response.text)
                for sample in family.samples}

    documented = documented_series()
    assert len(documented) >= 20
    samples = scrape()
    names = set(samples) | {name.rsplit("_", 1)[0] for name in samples if name.endswith(("_bucket", "_count", "_sum"))}
    assert [name for name in documented if name not in names] == []

    text = httpx.get(f"{base_url}/metrics", timeout=20).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counts = {s.labels["step"]: s.value for s in families["turnstream_step_duration_seconds"].samples
              if s.name.endswith("_count") and s.labels["outcome"] == "ok"}
    assert all(counts[step] >= 1 for step in ("reason", "discover", "execute", "synthesize")), counts
    done = [s.value for s in families["turnstream_turns"].samples if s.labels.get("outcome") == "done"]
    assert done and done[0] >= 1
    assert families["turnstream_workers_online"].samples[0].value >= 1
    up = {s.labels["store"]: s.value for s in families["turnstream_redis_up"].samples}
    assert up == dict.fromkeys(STORES, 1.0)


def test_a_dead_redis_shows_as_down_and_the_rest_of_the_page_still_renders(base_url, stack):
    stack.stop_redis("auth_memo")
    try:
        def auth_memo_down():
            rows = {row["store"]: row for row in ops_snapshot(base_url)["redis"]}
            return rows if not rows["auth_memo"]["up"] else None

        rows = eventually(auth_memo_down)
        assert rows and "error" in rows["auth_memo"]
        assert all(rows[store]["up"] for store in ("broker", "progress", "exec_cache"))
        page = httpx.get(f"{base_url}/ops", headers=bearer(roles=ADMIN), timeout=20)
        assert page.status_code == 200
        assert '<tr data-store="auth_memo" class="down">' in page.text
        assert '<tr data-store="broker" class="up">' in page.text
        metrics_text = httpx.get(f"{base_url}/metrics", timeout=20).text
        assert 'turnstream_redis_up{store="auth_memo"} 0.0' in metrics_text
    finally:
        stack.restart_redis("auth_memo")
