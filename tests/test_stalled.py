"""Stalled turns are flagged: a turn whose step has not moved for longer than TURNSTREAM_STALL_S shows
as stalled in /ops (the snapshot and the page) and in turnstream_turns_stalled.

The situation from an operator's walkthrough: turns accepted while no worker takes them sit in
`queued` forever. Here the web tier runs with no worker, so the turn cannot move; once a worker
starts, it finishes and nothing is stalled any more."""

import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.identity import issue_user_token
from tests.sse import bearer, post_prompt
from tests.stack import Stack
from tests.waiting import wait_for

STALL_S = 3




def stalled_in_metrics(base_url: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    family = next(f for f in text_string_to_metric_families(text) if f.name == "turnstream_turns_stalled")
    return family.samples[0].value


@pytest.fixture(scope="module")
def idle_stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("stalled"), TURNSTREAM_STALL_S=str(STALL_S), TURNSTREAM_OPS_REFRESH_S="0.5")
    try:
        stack.start_redis()
        with stack.env_applied():
            stack.start_web()
            yield stack
    finally:
        stack.stop()


def test_a_turn_no_worker_takes_is_flagged_stalled_then_cleared_when_it_finishes(idle_stack):
    base_url = idle_stack.base_url
    admin = {"Authorization": f"Bearer {issue_user_token('ops', 'acme', ['admin'])}"}
    session_id = "s" + uuid.uuid4().hex[:12]
    response = post_prompt(base_url, session_id, "What is the weather in Paris?")
    assert response.status_code == 202, response.text
    message_id = response.json()["message_id"]

    def snapshot_turn() -> dict:
        turns = httpx.get(f"{base_url}/ops/snapshot", headers=admin, timeout=30).json()["turns"]["data"]
        return {**turns, "item": next(t for t in turns["items"] if t["message_id"] == message_id)}

    fresh = snapshot_turn()
    assert fresh["item"]["stalled"] is False and fresh["item"]["idle_s"] <= STALL_S

    stalled = wait_for(lambda: (t := snapshot_turn())["item"]["stalled"] and t)
    assert stalled["stalled"] >= 1 and stalled["stall_s"] == STALL_S
    assert stalled["item"]["status"] == "queued" and stalled["item"]["idle_s"] > STALL_S
    assert wait_for(lambda: stalled_in_metrics(base_url) >= 1)
    page = httpx.get(f"{base_url}/ops", headers=admin, timeout=30)
    assert page.status_code == 200
    row = next(r for r in page.text.split("<tr") if message_id in r)
    assert 'class="stalled"' in row and "· stalled" in row

    idle_stack.start_worker()
    status_url = f"{base_url}/api/sessions/{session_id}/messages/{message_id}"
    wait_for(lambda: httpx.get(status_url, headers=bearer(), timeout=10).json()["status"] == "done",
             timeout=90)
    assert wait_for(lambda: stalled_in_metrics(base_url) == 0)
