"""Whole turns through the agent loop (rules reasoner, built-in MCP server over stdio): history
feeds follow-ups, a second tool round when the first one's results call for it, and tools the
user may not call are never offered."""

import json

from tests.sse import bearer, post_prompt, read_stream, tool_calls

TICKET_PROMPT = "Please open a ticket about my latest order, it arrived broken"


def rounds(events) -> list[tuple[str, int | None]]:
    return [(e.data["step"], e.data.get("round")) for e in events if e.type == "step" and e.data["status"] == "started"]


def test_a_follow_up_uses_the_sessions_history(base_url, session_id):
    first = post_prompt(base_url, session_id, "What is the weather in Paris?").json()
    assert read_stream(base_url, first["stream_url"])[-1].type == "done"
    second = post_prompt(base_url, session_id, "And in Berlin?").json()
    events = read_stream(base_url, second["stream_url"])
    assert [(e.data["tool"], e.data["args"]) for e in tool_calls(events)] == [("weather", {"city": "Berlin"})]
    assert events[-1].data["answer"] == "In Berlin it is 9°C with clear and wind at 10 km/h."


def test_a_second_tool_round_follows_from_the_first_ones_results(stack, base_url, session_id):
    admin = bearer(user="alice", roles=("admin",))
    body = post_prompt(base_url, session_id, TICKET_PROMPT, headers=admin).json()
    events = read_stream(base_url, body["stream_url"])
    assert rounds(events) == [("discover", None), ("reason", 1), ("execute", 1), ("reason", 2), ("execute", 2),
                              ("reason", 3), ("synthesize", None)]
    tools = [(e.data["tool"], e.data["status"]) for e in tool_calls(events)]
    assert tools == [("my_orders", "ok"), ("create_ticket", "ok")]
    tickets = [json.loads(line) for line in (stack.base_dir / "tickets.jsonl").read_text().splitlines()]
    assert tickets[-1]["subject"] == "Problem with order A-1017" and tickets[-1]["opened_by"] == "acme/alice"
    assert tickets[-1]["ticket_id"] in events[-1].data["answer"]


def test_a_tool_the_user_may_not_call_is_never_offered(stack, base_url, session_id):
    tickets = stack.base_dir / "tickets.jsonl"
    before = tickets.read_text() if tickets.exists() else ""
    body = post_prompt(base_url, session_id, TICKET_PROMPT, headers=bearer(user="alice", roles=("analyst",))).json()
    events = read_stream(base_url, body["stream_url"])
    assert [e.data["tool"] for e in tool_calls(events)] == ["my_orders"]
    assert events[-1].data["answer"].startswith("You have 2 orders: A-1001")
    assert (tickets.read_text() if tickets.exists() else "") == before, "no ticket was opened"
