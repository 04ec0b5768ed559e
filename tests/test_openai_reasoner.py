"""The `openai` reasoner against a local OpenAI-compatible server that injects failures
(tests/fake_openai.py): first directly, then as the reasoner of a whole system, where every
failure must end the turn with one readable error event (the chain's errback) within the
deadline instead of hanging the stream or passing for "no tool calls"."""

import json
import time
import uuid

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
DEADLINE_S = 2


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI(keepalive_s=0.5) as server:
        yield server


def reasoner(fake: FakeOpenAI, timeout: float = 10.0) -> OpenAIReasoner:
    return OpenAIReasoner(Settings(openai_base_url=fake.base_url, openai_api_key="sk-test", openai_model="fake-model",
                                   reasoner_timeout_s=timeout))


def test_tool_calls_come_from_one_finished_reply(fake):
    calls = reasoner(fake).decide(TurnContext(prompt="weather in Paris and 6*7+1?", tools=TOOLS))
    assert [(c["tool"], c["args"], c["model_call_id"]) for c in calls] == [
        ("weather", {"city": "Paris"}, "call_w1"), ("calculator", {"expression": "6 * 7 + 1"}, "call_c2")]
    sent = fake.requests[-1]
    assert not sent.get("stream"), "tool choice is asked without streaming"
    assert sent["model"] == "fake-model" and sent["tool_choice"] == "auto"
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
    assert fake.requests[-1]["stream"] is True
    assert "tools" not in fake.requests[-1], "the answer is written without tools"


# (prompt, which call fails, the error's text after the server's address)
FAILURES = [
    ("a silent model", "decide", f"did not answer within {DEADLINE_S} s"),
    ("fail now", "decide", "answered HTTP 500"),
    ("a keep-alive every half second", "answer", f"did not answer within {DEADLINE_S} s"),
    ("an endless answer", "answer", f"did not finish its answer within {DEADLINE_S} s"),
    ("an empty stream", "answer", "sent an empty answer stream"),
    ("a truncated stream", "answer", "sent an answer stream that stopped before it finished"),
]


@pytest.mark.parametrize(("prompt", "call", "clause"), FAILURES, ids=[f[0] for f in FAILURES])
def test_each_failure_is_one_readable_error_within_the_deadline(fake, prompt, call, clause):
    model = reasoner(fake, timeout=DEADLINE_S)
    ctx = TurnContext(prompt=prompt, tools=TOOLS if call == "decide" else [])
    pieces: list[str] = []
    started = time.monotonic()
    with pytest.raises(ReasonerError) as raised:
        model.decide(ctx) if call == "decide" else model.answer(ctx, pieces.append)
    assert time.monotonic() - started < 3 * DEADLINE_S, "a generous bound: it did not hang"
    assert str(raised.value) == f"the model server at {fake.base_url} {clause}"


def test_an_unreachable_server_is_named_with_the_reason():
    closed = OpenAIReasoner(Settings(openai_base_url="http://127.0.0.1:9/v1", reasoner_timeout_s=DEADLINE_S))
    with pytest.raises(ReasonerError) as raised:
        closed.decide(TurnContext(prompt="hi", tools=TOOLS))
    assert str(raised.value) == "the model server at http://127.0.0.1:9/v1 could not be reached (connection refused)"


@pytest.fixture(scope="module")
def openai_stack(tmp_path_factory, fake, stack):  # `stack` sets the test secret in this process
    system = Stack(tmp_path_factory.mktemp("openai"), TURNSTREAM_REASONER="openai",
                   TURNSTREAM_OPENAI_BASE_URL=fake.base_url, TURNSTREAM_OPENAI_MODEL="fake-model",
                   TURNSTREAM_REASONER_TIMEOUT_S=str(DEADLINE_S), TURNSTREAM_MAX_TOOL_ROUNDS="2")
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


# (prompt, the step that fails, the error's text after the server's address)
TURN_FAILURES = [
    ("a silent model, weather in Paris", "reason", f"did not answer within {DEADLINE_S} s"),
    ("weather in Paris, fail now", "reason", "answered HTTP 500"),
    ("weather in Paris, with a keep-alive every half second", "synthesize", f"did not answer within {DEADLINE_S} s"),
    ("weather in Paris, then an empty stream", "synthesize", "sent an empty answer stream"),
    ("weather in Paris, then a truncated stream", "synthesize",
     "sent an answer stream that stopped before it finished"),
]


@pytest.mark.parametrize(("prompt", "step", "clause"), TURN_FAILURES, ids=[f[0] for f in TURN_FAILURES])
def test_a_failing_model_ends_the_turn_with_one_readable_error(openai_stack, fake, prompt, step, clause):
    body = post_prompt(openai_stack.base_url, f"oaif-{uuid.uuid4().hex[:8]}", prompt).json()
    events = read_stream(openai_stack.base_url, body["stream_url"], timeout=60)
    assert events[-1].type == "error" and events[-1].data["step"] == step
    assert f"the model server at {fake.base_url} {clause}" in events[-1].data["message"]
    status = httpx.get(openai_stack.base_url + body["status_url"], headers=bearer()).json()
    assert status["status"] == "failed" and clause in status["error"]


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
