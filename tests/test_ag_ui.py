"""turnstream as an AG-UI agent, against the real stack.

The reference client (`@ag-ui/client`'s HttpAgent, from npm) runs turns through tests/agui_client.cjs,
with the client's own protocol checks and ours; Python reads the same endpoint and parses every
event with ag-ui-protocol's models."""

import json
import os
import re
import subprocess
import uuid

import httpx
import pytest
from ag_ui.core import Event, EventType
from httpx_sse import connect_sse
from pydantic import TypeAdapter

from shared.cli.processes import REPO_ROOT
from shared.progress import read_log
from tests.sse import bearer, read_stream
from tests.stack import Stack

CLIENT_DIR = REPO_ROOT / ".run" / "ag-ui-client" / "node_modules"
SCRIPT = REPO_ROOT / "tests" / "agui_client.cjs"
EVENT = TypeAdapter(Event)
WEATHER_PARIS = "In Paris it is 14°C with light rain and wind at 18 km/h."


def token(user: str = "alice") -> str:
    return bearer(user)["Authorization"].removeprefix("Bearer ")


def run_client(base_url: str, thread_id: str, prompt: str, **options) -> dict:
    """One turn through HttpAgent; what it saw, as the script prints it."""
    assert (CLIENT_DIR / "@ag-ui" / "client").exists(), \
        f"{CLIENT_DIR} lacks @ag-ui/client: `make test` installs it (deploy/install-ag-ui-client.sh)"
    config = {"baseUrl": base_url, "token": options.pop("token", None) or token(), "threadId": thread_id,
              "prompt": prompt, **options}
    done = subprocess.run(["node", str(SCRIPT), json.dumps(config)], capture_output=True, text=True, timeout=90,
                          env={**os.environ, "NODE_PATH": str(CLIENT_DIR)}, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"the client printed nothing (exit {done.returncode}): {done.stderr[-2000:]}"
    seen = json.loads(lines[-1])
    assert "fatal" not in seen, seen["fatal"]
    return seen


def run_input(thread_id: str, run_id: str, prompt: str, **extra) -> dict:
    return {"threadId": thread_id, "runId": run_id, "state": {}, "tools": [], "context": [], "forwardedProps": {},
            "messages": [{"id": "m1", "role": "user", "content": prompt}], **extra}


def read_agui(base_url: str, response_of) -> list[tuple[str, dict]]:
    """(SSE id, parsed event) pairs: every event must parse with ag-ui-protocol's models."""
    events = []
    with httpx.Client(timeout=60) as client, response_of(client) as source:
        assert source.response.status_code == 200, source.response.read()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for sse in source.iter_sse():
            if not sse.data:
                continue
            events.append((sse.id, EVENT.validate_json(sse.data)))
    return events


def post_run(base_url: str, body: dict, headers: dict | None = None):
    return lambda client: connect_sse(client, "POST", f"{base_url}/api/ag-ui", json=body, headers=headers or bearer())


# --- the reference client --------------------------------------------------------------------
def test_the_reference_client_runs_a_turn_with_a_tool_call_and_an_answer(base_url, session_id):
    seen = run_client(base_url, session_id, "What is the weather in Paris?")
    assert seen["error"] is None
    assert seen["problems"] == []
    types = [e["type"] for e in seen["events"]]
    assert types[0] == "RUN_STARTED" and types[-1] == "RUN_FINISHED"
    assert types.index("TOOL_CALL_START") < types.index("TOOL_CALL_RESULT") < types.index("TEXT_MESSAGE_START")
    steps = [e["stepName"] for e in seen["events"] if e["type"] == "STEP_STARTED"]
    assert steps == ["discover", "reason-1", "execute-1", "reason-2", "synthesize"]

    messages = seen["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    call = messages[1]["toolCalls"][0]
    assert call["function"]["name"] == "weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert messages[2]["toolCallId"] == call["id"]
    assert json.loads(messages[2]["content"])["temp_c"] == 14
    assert messages[3]["content"] == WEATHER_PARIS
    assert seen["result"] == {"answer": WEATHER_PARIS}

    # The same turn as any other: in the session's history, under the run's id.
    listing = httpx.get(f"{base_url}/api/sessions/{session_id}/messages", headers=bearer()).json()
    assert [(m["message_id"], m["status"], m["answer"]) for m in listing["messages"]] == \
        [(seen["runId"], "done", WEATHER_PARIS)]


def test_a_slow_tool_reports_progress_and_a_second_run_continues_the_thread(base_url, session_id):
    first = run_client(base_url, session_id, "Make my sales report")
    assert first["error"] is None and first["problems"] == []
    progress = [e["value"] for e in first["events"] if e["type"] == "CUSTOM"]
    assert progress and all(p["tool"] == "sales_report" for p in progress)
    assert {"Collecting orders", "Writing the summary"} & {p.get("message") for p in progress}
    assert first["messages"][-1]["content"].startswith("Your sales report: 2 orders worth 288.5 EUR")

    second = run_client(base_url, session_id, "What is the weather in Paris?")
    assert second["error"] is None and second["problems"] == []
    listing = httpx.get(f"{base_url}/api/sessions/{session_id}/messages", headers=bearer()).json()
    assert [m["message_id"] for m in listing["messages"]] == [first["runId"], second["runId"]]


def test_a_failed_tool_call_is_a_tool_result_the_client_sees(base_url, session_id):
    seen = run_client(base_url, session_id, "What is the weather in Paris? Also 1/0 + 1")
    assert seen["error"] is None and seen["problems"] == []
    results = {m["toolCallId"]: m["content"] for m in seen["messages"] if m["role"] == "tool"}
    failed = [json.loads(c) for c in results.values() if c.startswith('{"status"')]
    assert failed and failed[0]["status"] == "error" and "cannot evaluate" in failed[0]["error"]
    assert "I could not use calculator" in seen["messages"][-1]["content"]


def test_cancelling_a_run_ends_it_as_cancelled_in_the_client(base_url, session_id):
    seen = run_client(base_url, session_id, "Make my sales report", cancelOnTool="sales_report")
    assert seen["cancelStatus"] == 200
    assert seen["error"] is None
    assert seen["problems"] == []
    finished = seen["events"][-1]
    assert finished["type"] == "RUN_FINISHED" and finished["outcome"] == {"type": "cancelled"}
    assert "TEXT_MESSAGE_START" not in [e["type"] for e in seen["events"]]
    status = httpx.get(f"{base_url}/api/sessions/{session_id}/messages/{seen['runId']}", headers=bearer()).json()
    assert status["status"] == "cancelled"


def test_a_refused_run_is_an_error_in_the_client(base_url, session_id):
    seen = run_client(base_url, session_id, "x" * 4001)
    assert seen["events"] == []
    assert seen["error"] and "413" in seen["error"]


@pytest.fixture(scope="module")
def broken_reasoner(stack, tmp_path_factory):
    """A system whose reasoner cannot be reached, so every turn fails at `reason`."""
    system = Stack(tmp_path_factory.mktemp("agui-broken"), TURNSTREAM_REASONER="openai",
                   TURNSTREAM_OPENAI_BASE_URL="http://127.0.0.1:9/v1", TURNSTREAM_OPENAI_API_KEY="none",
                   TURNSTREAM_REASONER_TIMEOUT_S="5")
    with system.running():
        yield system


def test_a_failed_turn_is_a_run_error_with_the_readable_message(broken_reasoner, session_id):
    seen = run_client(broken_reasoner.base_url, session_id, "What is the weather in Paris?")
    assert seen["problems"] == []
    error = seen["events"][-1]
    assert error["type"] == "RUN_ERROR"
    assert error["code"] == "reason_failed"
    assert error["message"].startswith("Reasoning failed: the model server at http://127.0.0.1:9/v1")
    status = httpx.get(f"{broken_reasoner.base_url}/api/sessions/{session_id}/messages/{seen['runId']}",
                       headers=bearer()).json()
    assert status["status"] == "failed" and status["error"] == error["message"]


def test_the_readme_example_works_as_written(base_url, tmp_path):
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Use turnstream from an AG-UI frontend"):]
    example = re.search(r"```js\n(.*?)```", section, re.S).group(1)
    assert "http://127.0.0.1:8000" in example  # what `make run` serves; this test's stack is elsewhere
    (tmp_path / "agui.mjs").write_text(example.replace("http://127.0.0.1:8000", base_url))
    (tmp_path / "node_modules").symlink_to(CLIENT_DIR)
    done = subprocess.run(["node", "agui.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=90,
                          env={**os.environ, "TOKEN": token()}, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["calling weather", WEATHER_PARIS, "user → assistant → tool → assistant"]


# --- the wire, parsed with ag-ui-protocol's models ---------------------------------------------------
def test_every_event_parses_and_carries_its_log_id(stack, base_url, session_id):
    run_id = "run" + uuid.uuid4().hex[:10]
    events = read_agui(base_url, post_run(base_url, run_input(session_id, run_id, "calculate 6 * 7 + 1")))
    types = [event.type for _, event in events]
    assert types[0] == EventType.RUN_STARTED and types[-1] == EventType.RUN_FINISHED
    assert {EventType.TOOL_CALL_START, EventType.TOOL_CALL_ARGS, EventType.TOOL_CALL_END,
            EventType.TOOL_CALL_RESULT, EventType.TEXT_MESSAGE_CONTENT} <= set(types)
    answer = "".join(e.delta for _, e in events if e.type == EventType.TEXT_MESSAGE_CONTENT)
    assert answer == "6 * 7 + 1 = 43."

    log_ids = [entry.id for entry in read_log(session_id, run_id, r=stack.client("progress"))]
    sse_ids = [sse_id for sse_id, _ in events[1:]]
    assert sse_ids and set(sse_ids) <= set(log_ids), "every event after RUN_STARTED carries a log id"
    assert sse_ids == sorted(sse_ids, key=lambda i: tuple(map(int, i.split("-"))))


def test_a_dropped_client_rejoins_and_gets_only_what_it_missed(stack, base_url, session_id):
    run_id = "run" + uuid.uuid4().hex[:10]
    whole = read_agui(base_url, post_run(base_url, run_input(session_id, run_id, "What is the weather in Paris?")))
    rejoin = f"{base_url}/api/ag-ui/{session_id}/{run_id}"

    again = read_agui(base_url, lambda c: connect_sse(c, "GET", rejoin, headers=bearer()))
    assert [(i, e.type) for i, e in again] == [(i, e.type) for i, e in whole], "without Last-Event-ID: all of it"

    cut = next(i for i, (_, e) in enumerate(whole) if e.type == EventType.TOOL_CALL_RESULT)
    last_id = whole[cut][0]
    rest = read_agui(base_url, lambda c: connect_sse(c, "GET", rejoin, headers={**bearer(), "Last-Event-ID": last_id}))
    assert [(i, e.model_dump()) for i, e in rest] == [(i, e.model_dump()) for i, e in whole[cut + 1:]]

    assert httpx.get(rejoin, headers=bearer("mallory")).status_code == 404
    assert httpx.get(rejoin, headers={**bearer(), "Last-Event-ID": "nonsense"}).status_code == 400


def test_the_same_turn_streams_on_our_own_endpoint_too(base_url, session_id):
    run_id = "run" + uuid.uuid4().hex[:10]
    read_agui(base_url, post_run(base_url, run_input(session_id, run_id, "What is the weather in Paris?")))
    events = httpx.get(f"{base_url}/api/sessions/{session_id}/messages/{run_id}/events", headers=bearer()).json()
    tools = [(e["data"]["tool"], e["data"]["status"]) for e in events["events"] if e["type"] == "tool"]
    assert tools == [("weather", "started"), ("weather", "ok")]
    assert events["status"] == "done"


# --- refusals before the stream starts: the same JSON errors as the rest of the API ----------------------
@pytest.mark.parametrize(("change", "status", "error"), [
    ({"threadId": "bad id!"}, 400, "invalid_id"),
    ({"runId": "../x"}, 400, "invalid_id"),
    ({"messages": []}, 400, "no_prompt"),
    ({"messages": [{"id": "a", "role": "assistant", "content": "hi"}]}, 400, "no_prompt"),
    ({"messages": "nope"}, 400, "invalid_body"),
    ({"messages": [{"id": "m1", "role": "user", "content": "x" * 4001}]}, 413, "prompt_too_long"),
])
def test_bad_run_input_is_a_clear_json_error(base_url, session_id, change, status, error):
    body = {**run_input(session_id, "run" + uuid.uuid4().hex[:8], "hello"), **change}
    response = httpx.post(f"{base_url}/api/ag-ui", json=body, headers=bearer())
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == error


def test_ownership_duplicates_and_tokens_are_checked_before_streaming(base_url, session_id):
    run_id = "run" + uuid.uuid4().hex[:10]
    read_agui(base_url, post_run(base_url, run_input(session_id, run_id, "calculate 1 + 1")))
    again = httpx.post(f"{base_url}/api/ag-ui", json=run_input(session_id, run_id, "calculate 1 + 1"), headers=bearer())
    assert (again.status_code, again.json()["error"]) == (409, "already_exists")
    other = httpx.post(f"{base_url}/api/ag-ui", json=run_input(session_id, "run2", "hi"), headers=bearer("mallory"))
    assert (other.status_code, other.json()["error"]) == (404, "not_found")
    anonymous = httpx.post(f"{base_url}/api/ag-ui", json=run_input(session_id, "run3", "hi"))
    assert anonymous.status_code == 401
    text = httpx.post(f"{base_url}/api/ag-ui", content="{}", headers=bearer())
    assert text.status_code == 415
