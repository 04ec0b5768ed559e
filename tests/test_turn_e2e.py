"""A prompt becomes a Celery chain whose progress a client reads over SSE until `done`."""

import httpx

from tests.sse import bearer, post_prompt, read_stream, tool_calls

# discover, then reason -> execute until the reasoner wants no more tools, then synthesize.
ONE_TOOL_ROUND = [("discover", None), ("reason", 1), ("execute", 1), ("reason", 2), ("synthesize", None)]


def test_prompt_streams_every_step_in_order_then_the_answer(base_url, session_id):
    response = post_prompt(base_url, session_id, "What is the weather in Paris?")
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"session_id", "message_id", "stream_url", "status_url"}
    assert body["session_id"] == session_id

    events = read_stream(base_url, body["stream_url"])

    steps = [(e.data["step"], e.data.get("round"), e.data["status"]) for e in events if e.type == "step"]
    assert steps == [(step, round_, status) for step, round_ in ONE_TOOL_ROUND for status in ("started", "finished")]
    finished = [e.data for e in events if e.type == "step" and e.data["status"] == "finished"]
    assert all(isinstance(d["duration_ms"], (int, float)) and d["duration_ms"] >= 0 for d in finished)
    tools = [e.data for e in tool_calls(events)]
    assert [(t["tool"], t["args"], t["status"]) for t in tools] == [("weather", {"city": "Paris"}, "ok")]
    assert events[-1].type == "done"
    assert events[-1].data["answer"] == "In Paris it is 14°C with light rain and wind at 18 km/h."
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids), "every event has its own id"


def shape(events) -> list[tuple]:
    """The stream as a user reads it: each step phase, each call's phase, the answer's deltas as one
    entry, the terminal event."""
    seen: list[tuple] = []
    for e in events:
        if e.type == "step":
            seen.append(("step", e.data["step"], e.data.get("round"), e.data["status"]))
        elif e.type == "tool":
            seen.append(("tool", e.data["call_id"], e.data["status"]))
        elif e.type == "token":
            if seen[-1] != ("token",):
                seen.append(("token",))
        else:
            seen.append((e.type,))
    return seen


def test_a_turn_with_calls_in_parallel_streams_every_step_and_call_in_order(base_url, session_id):
    """Fewer tasks per turn (workers.tasks: steps that share a task) change nothing a stream shows:
    every step's started/finished, each call's started before any call ends, the round's end after
    both calls, then the next round and the answer."""
    body = post_prompt(base_url, session_id, "What is the weather in Paris? Also 6 * 7 + 1").json()
    events = read_stream(base_url, body["stream_url"])
    seen = shape(events)
    assert seen[:7] == [("accepted",), ("step", "discover", None, "started"), ("step", "discover", None, "finished"),
                        ("step", "reason", 1, "started"), ("step", "reason", 1, "finished"),
                        ("step", "execute", 1, "started"), ("tool", "r1c0", "started")]
    assert seen[7] == ("tool", "r1c1", "started")
    assert sorted(seen[8:10]) == [("tool", "r1c0", "ok"), ("tool", "r1c1", "ok")]
    assert seen[10:] == [("step", "execute", 1, "finished"), ("step", "reason", 2, "started"),
                         ("step", "reason", 2, "finished"), ("step", "synthesize", None, "started"), ("token",),
                         ("step", "synthesize", None, "finished"), ("done",)]
    assert "43" in events[-1].data["answer"] and "Paris" in events[-1].data["answer"]


def test_a_turn_with_one_call_streams_the_same_phases(base_url, session_id):
    body = post_prompt(base_url, session_id, "calculate 6 * 7 + 1").json()
    seen = shape(read_stream(base_url, body["stream_url"]))
    assert seen == [("accepted",), ("step", "discover", None, "started"), ("step", "discover", None, "finished"),
                    ("step", "reason", 1, "started"), ("step", "reason", 1, "finished"),
                    ("step", "execute", 1, "started"), ("tool", "r1c0", "started"), ("tool", "r1c0", "ok"),
                    ("step", "execute", 1, "finished"), ("step", "reason", 2, "started"),
                    ("step", "reason", 2, "finished"), ("step", "synthesize", None, "started"), ("token",),
                    ("step", "synthesize", None, "finished"), ("done",)]


def test_status_url_reports_the_finished_turn(base_url, session_id):
    body = post_prompt(base_url, session_id, "calculate 6 * 7 + 1").json()
    events = read_stream(base_url, body["stream_url"])
    assert events[-1].data["answer"] == "6 * 7 + 1 = 43."

    status = httpx.get(base_url + body["status_url"], headers=bearer()).json()
    assert status["status"] == "done"
    assert status["answer"] == "6 * 7 + 1 = 43."
    assert status["message_id"] == body["message_id"]


def test_a_tool_error_is_reported_and_the_turn_still_answers(base_url, session_id):
    body = post_prompt(base_url, session_id, "What is the weather in Paris? Also 1/0 + 1").json()
    events = read_stream(base_url, body["stream_url"])
    tools = {e.data["tool"]: e.data for e in tool_calls(events)}
    assert tools["calculator"]["status"] == "error"
    assert "cannot evaluate" in tools["calculator"]["error"]
    assert events[-1].type == "done"
    assert "I could not use calculator" in events[-1].data["answer"]


def test_the_turns_of_a_session_are_listed_for_their_owner(base_url, session_id):
    first = post_prompt(base_url, session_id, "How do I reset my password?").json()
    read_stream(base_url, first["stream_url"])
    listing = httpx.get(f"{base_url}/api/sessions/{session_id}/messages", headers=bearer()).json()
    assert [m["message_id"] for m in listing["messages"]] == [first["message_id"]]
    assert "Reset password" in listing["messages"][0]["answer"]
    assert session_id in httpx.get(f"{base_url}/api/sessions", headers=bearer()).json()["sessions"]
