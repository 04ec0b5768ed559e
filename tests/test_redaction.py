"""While a step runs, what `inspect active` reports (Flower's worker pages, /ops's workers panel)
names the turn but carries no user text."""

import json
import time
import uuid

import httpx
import pytest

from shared.celery_config import make_celery
from shared.identity import issue_user_token
from shared.settings import Settings
from tests.sse import post_prompt, read_stream
from tests.stack import Stack


@pytest.fixture(scope="module")
def slow_tools(tmp_path_factory):
    """A system whose weather tool takes seconds, so its call is still running when asked."""
    stack = Stack(tmp_path_factory.mktemp("redaction"), TURNSTREAM_TOOL_LATENCY_MS="4000",
                  TURNSTREAM_OPS_REFRESH_S="0.5")
    with stack.running(), stack.env_applied() as system:
        yield system


def test_a_running_tool_call_shows_its_ids_but_not_its_arguments(slow_tools):
    base_url = slow_tools.base_url
    body = post_prompt(base_url, "s" + uuid.uuid4().hex[:12], "What is the weather in Paris?").json()
    app = make_celery("redaction-inspect", Settings(broker_redis_url=slow_tools.env["BROKER_REDIS_URL"]))
    admin = {"Authorization": f"Bearer {issue_user_token('ops', 'acme', ['admin'])}"}
    running, panel = None, None
    deadline = time.monotonic() + 60
    try:
        while running is None and time.monotonic() < deadline:
            replies = app.control.inspect(timeout=1).active() or {}
            running = next((t for tasks in replies.values() for t in tasks
                            if t["name"] == "turnstream.call_tool" and body["message_id"] in json.dumps(t["args"])), None)
            if running:
                panel = httpx.get(f"{base_url}/ops/snapshot", headers=admin, timeout=30).json()["workers"]
    finally:
        app.close()
    assert running is not None, "the tool call was seen running"
    shown = json.dumps(running["args"])
    assert "Paris" not in shown and "<redacted" in shown
    assert '"tool": "weather"' in shown
    steps = [t for worker in panel["data"] for t in worker["active"] if t["message_id"] == body["message_id"]]
    assert steps, "/ops still names the turn of a running step"
    assert read_stream(base_url, body["stream_url"])[-1].type == "done"
