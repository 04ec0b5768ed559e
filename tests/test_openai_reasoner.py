"""The `openai` reasoner against a local OpenAI-compatible server speaking the streamed wire format:
first directly, then as the reasoner of a whole system, where a stalled model must end the turn
with an error event (the chain's errback) instead of hanging the stream."""

import json

import httpx
import pytest

from shared.settings import Settings
from tests.fake_openai import ANSWER_PIECES, FakeOpenAI
from tests.sse import bearer, post_prompt, read_stream, tool_calls
from tests.stack import Stack
from workers.reasoners.base import ReasonerError, TurnContext
from workers.reasoners.openai_chat import OpenAIReasoner

TOOLS = [{"name": "weather", "description": "Current weather for a city.",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
         {"name": "calculator", "description": "Evaluate arithmetic.",
          "input_schema": {"type": "object", "properties": {"expression": {"type": "string"}}}}]


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI(stall_s=4.0) as server:
        yield server


def reasoner(fake: FakeOpenAI, timeout: float = 10.0) -> OpenAIReasoner:
    return OpenAIReasoner(Settings(openai_base_url=fake.base_url, openai_api_key="sk-test", openai_model="fake-model",
                                   reasoner_timeout_s=timeout))


def test_tool_calls_are_assembled_from_streamed_deltas(fake):
    calls = reasoner(fake).decide(TurnContext(prompt="weather in Paris and 6*7+1?", tools=TOOLS))
    assert [(c["tool"], c["args"], c["model_call_id"]) for c in calls] == [
        ("weather", {"city": "Paris"}, "call_w1"), ("calculator", {"expression": "6 * 7 + 1"}, "call_c2")]
    sent = fake.requests[-1]
    assert sent["stream"] is True and sent["model"] == "fake-model" and sent["tool_choice"] == "auto"
    assert [t["function"]["name"] for t in sent["tools"]] == ["weather", "calculator"]
    assert sent["tools"][0]["function"]["parameters"] == TOOLS[0]["input_schema"]


def test_results_go_back_as_tool_messages_and_the_answer_streams(fake):
    outcomes = [{"tool": "weather", "args": {"city": "Paris"}, "model_call_id": "call_w1", "status": "ok",
                 "result": {"city": "Paris", "condition": "light rain"}},
                {"tool": "calculator", "args": {"expression": "6 * 7 + 1"}, "model_call_id": "call_c2",
                 "status": "error", "error": "boom"}]
    ctx = TurnContext(prompt="weather in Paris and 6*7+1?", tools=TOOLS, rounds=[outcomes],
                      history=[{"prompt": "hi", "answer": "hello", "tools": []}])
    assert reasoner(fake).decide(ctx) == [], "finish_reason stop without tool calls: done"
    messages = fake.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "tool", "tool"]
    assert [c["id"] for c in messages[4]["tool_calls"]] == ["call_w1", "call_c2"]
    assert [(m["tool_call_id"], json.loads(m["content"])) for m in messages[5:]] == [
        ("call_w1", {"city": "Paris", "condition": "light rain"}), ("call_c2", {"error": "boom"})]

    pieces: list[str] = []
    text = reasoner(fake).answer(ctx, pieces.append)
    assert pieces == ANSWER_PIECES
    assert text == "".join(ANSWER_PIECES).strip()
    assert "tools" not in fake.requests[-1], "the answer is written without tools"


def test_a_stalled_or_missing_endpoint_is_a_reasoner_error(fake):
    with pytest.raises(ReasonerError, match="timed out"):
        reasoner(fake, timeout=0.5).decide(TurnContext(prompt="slow please", tools=TOOLS))
    closed = OpenAIReasoner(Settings(openai_base_url="http://127.0.0.1:9/v1", reasoner_timeout_s=2))
    with pytest.raises(ReasonerError, match="openai reasoner"):
        closed.decide(TurnContext(prompt="hi", tools=TOOLS))


@pytest.fixture(scope="module")
def openai_stack(tmp_path_factory, fake, stack):  # `stack` sets the test secret in this process
    system = Stack(tmp_path_factory.mktemp("openai"), TURNSTREAM_REASONER="openai",
                   TURNSTREAM_OPENAI_BASE_URL=fake.base_url, TURNSTREAM_OPENAI_MODEL="fake-model",
                   TURNSTREAM_REASONER_TIMEOUT_S="1", TURNSTREAM_MAX_TOOL_ROUNDS="2")
    with system.running(name="openai-worker"):
        yield system


def test_a_turn_with_the_openai_reasoner_calls_tools_and_streams_tokens(openai_stack):
    body = post_prompt(openai_stack.base_url, "oai1", "What is the weather in Paris, and 6 * 7 + 1?").json()
    events = read_stream(openai_stack.base_url, body["stream_url"])
    tools = [(e.data["tool"], e.data["args"], e.data["status"]) for e in tool_calls(events)]
    assert sorted(tools) == [("calculator", {"expression": "6 * 7 + 1"}, "ok"), ("weather", {"city": "Paris"}, "ok")]
    tokens = "".join(e.data["text"] for e in events if e.type == "token")
    assert events[-1].type == "done"
    assert events[-1].data["answer"] == tokens.strip() == "".join(ANSWER_PIECES).strip()


def test_a_stalled_model_ends_the_turn_with_an_error_event(openai_stack):
    body = post_prompt(openai_stack.base_url, "oai2", "a slow question").json()
    events = read_stream(openai_stack.base_url, body["stream_url"], timeout=60)
    assert events[-1].type == "error"
    assert events[-1].data["step"] == "reason"
    assert "openai reasoner timed out" in events[-1].data["message"]
    status = httpx.get(openai_stack.base_url + body["status_url"], headers=bearer()).json()
    assert status["status"] == "failed" and "timed out" in status["error"]


def test_a_failure_in_a_later_round_still_reaches_the_errback(openai_stack):
    """Round 2's reason task is sent by the `collect` that ends a chord: the errback
    must have been carried all the way there."""
    body = post_prompt(openai_stack.base_url, "oai3", "weather in Paris, then fail later").json()
    events = read_stream(openai_stack.base_url, body["stream_url"], timeout=60)
    assert [e.data["status"] for e in tool_calls(events)] == ["ok", "ok"]
    assert events[-1].type == "error" and events[-1].data["step"] == "reason"
    assert "500" in events[-1].data["message"]


def test_a_model_that_always_wants_tools_stops_at_the_round_limit(openai_stack):
    body = post_prompt(openai_stack.base_url, "oai4", "weather in Paris again and again").json()
    events = read_stream(openai_stack.base_url, body["stream_url"], timeout=60)
    started = [(e.data["step"], e.data.get("round")) for e in events if e.type == "step" and e.data["status"] == "started"]
    assert started == [("discover", None), ("reason", 1), ("execute", 1), ("reason", 2), ("execute", 2),
                       ("synthesize", None)], "after TURNSTREAM_MAX_TOOL_ROUNDS=2 rounds the answer is written"
    assert len([e for e in tool_calls(events)]) == 4
    assert events[-1].type == "done"


def test_a_model_that_calls_a_tool_it_was_not_offered_gets_a_denied_result(openai_stack):
    """A viewer is offered only search_kb; the model calls weather and calculator anyway: the guards
    in `execute` deny both, nothing runs, and the model sees the denial."""
    viewer = bearer("victor", "acme", ("viewer",))
    body = post_prompt(openai_stack.base_url, "oai5", "What is the weather in Paris, and 6 * 7 + 1?",
                       headers=viewer).json()
    events = read_stream(openai_stack.base_url, body["stream_url"], timeout=60)
    tools = sorted((e.data["tool"], e.data["status"], e.data["error"]) for e in tool_calls(events))
    assert tools == [("calculator", "denied", "You may not use calculator"),
                     ("weather", "denied", "You may not use weather")]
    assert events[-1].type == "done"
