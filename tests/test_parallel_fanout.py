"""Tool calls fan out in parallel on a gevent tools worker (`-Q tools -P gevent`), reaching the
built-in MCP server over streamable HTTP, while a separate worker takes the `llm` queue."""

import pytest

from shared.cli import processes
from shared.progress import entry_order
from tests.sse import post_prompt, read_stream, tool_calls
from tests.stack import Stack

LATENCY_MS = 200


@pytest.fixture(scope="module")
def gevent_stack(tmp_path_factory, stack):  # `stack` sets the test secret in this process
    base = tmp_path_factory.mktemp("fanout")
    port = processes.free_port()
    system = Stack(base, TURNSTREAM_TOOL_LATENCY_MS=str(LATENCY_MS),
                   TURNSTREAM_MCP_SERVERS=f'{{"mcpServers": {{"remote": {{"url": "http://127.0.0.1:{port}/mcp"}}}}}}')
    tools_server = processes.tool_server(system.env, port, base / "logs").start()
    try:
        system.start_redis()
        system.start_worker(name="tools", queues="tools", pool="gevent", concurrency=20, wait=False)
        system.start_worker(name="llm", queues="llm", pool="threads", concurrency=2, wait=False)
        processes.wait_for_worker(system.env, count=2)
        system.start_web()
        yield system
    finally:
        system.stop()
        tools_server.stop()


def test_three_tool_calls_run_at_the_same_time(gevent_stack):
    body = post_prompt(gevent_stack.base_url, "fan1", "Weather in Paris, London and Berlin?").json()
    events = read_stream(gevent_stack.base_url, body["stream_url"])
    tools = [e for e in tool_calls(events)]
    assert sorted(e.data["args"]["city"] for e in tools) == ["Berlin", "London", "Paris"]
    assert all(e.data["status"] == "ok" and e.data["duration_ms"] >= LATENCY_MS for e in tools)
    # Each call's end is when its event was logged; its start is that minus its duration.
    ends = [entry_order(e.id)[0] for e in tools]
    starts = [end - e.data["duration_ms"] for end, e in zip(ends, tools)]
    assert max(starts) < min(ends), "every call started before any of them finished: they overlapped"
    assert events[-1].type == "done"
    assert events[-1].data["answer"].count("°C") == 3


def test_a_slow_tools_progress_streams_from_a_gevent_worker(gevent_stack):
    """The progress relay under gevent: the MCP loop thread hands reports to the waiting greenlet."""
    body = post_prompt(gevent_stack.base_url, "fan2", "Make my sales report").json()
    events = read_stream(gevent_stack.base_url, body["stream_url"])
    calls = [e.data for e in events if e.type == "tool"]
    assert calls[0]["status"] == "started" and calls[-1]["status"] == "ok"
    running = [c for c in calls if c["status"] == "running"]
    assert running and all(c["tool"] == "sales_report" and c["total"] == 4 for c in running)
    assert events[-1].data["answer"].startswith("Your sales report: 2 orders")
