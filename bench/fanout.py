"""Parallel fan-out: three 200 ms tools in one turn, against the same three calls one after another.

The system runs as ops would run it: a gevent tools worker (`-Q discover,tools -P gevent`) and a
threads llm worker, the built-in MCP server over streamable HTTP with 200 ms of simulated
upstream latency. Measured per turn: the `execute` step's wall time (first started to
finished event), which includes the chord's scheduling and both guards (weather is declared
not cacheable here, so every turn really calls the tool). Baseline, same run, same server:
the same three MCP calls made sequentially through one persistent session.

    python bench/fanout.py [--turns 20]
"""

import argparse
import tempfile
import time
from pathlib import Path

from _common import percentile, summary  # noqa: E402  (puts the repo on sys.path)
import httpx

from shared.cli import processes
from shared.settings import Settings
from tests.sse import bearer, post_prompt, read_stream
from tests.stack import Stack
from workers.mcp.client import McpClient
from workers.mcp.config import ServerSpec

LATENCY_MS = 200
PROMPT = "Weather in Paris, London and Berlin?"
CITIES = ("Paris", "London", "Berlin")


def execute_ms(events) -> float:
    finished = [e for e in events if e.type == "step" and e.data["step"] == "execute" and e.data["status"] == "finished"]
    assert len(finished) == 1, events
    return finished[0].data["duration_ms"]


def time_turns(stack: Stack, turns: int) -> tuple[list[float], list[float]]:
    execute, wall = [], []
    with httpx.Client(headers=bearer(), timeout=30) as client:
        for _ in range(turns):
            started = time.perf_counter()
            body = post_prompt(stack.base_url, "fanout", PROMPT, client=client).json()
            events = read_stream(stack.base_url, body["stream_url"], client=client)
            assert events[-1].type == "done", events[-1]
            wall.append((time.perf_counter() - started) * 1000)
            execute.append(execute_ms(events))
    return execute, wall


def time_sequential(url: str, turns: int) -> list[float]:
    client = McpClient(Settings(), servers={"remote": ServerSpec(url=url)})
    try:
        client.list_tools()
        timings = []
        for _ in range(turns):
            started = time.perf_counter()
            for city in CITIES:
                client.call_tool("weather", {"city": city}, {"user": "bench", "tenant": "bench", "roles": []})
            timings.append((time.perf_counter() - started) * 1000)
        return timings
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        port = processes.free_port()
        url = f"http://127.0.0.1:{port}/mcp"
        uncached = base / "tool-cache.toml"
        uncached.write_text("[tools.weather]\ncacheable = false\n")
        stack = Stack(base, TURNSTREAM_TOOL_LATENCY_MS=str(LATENCY_MS), TURNSTREAM_EXEC_CACHE_TOOLS_FILE=str(uncached),
                      TURNSTREAM_MCP_SERVERS=f'{{"mcpServers": {{"remote": {{"url": "{url}"}}}}}}')
        server = processes.tool_server(stack.env, port, base / "logs").start()
        try:
            stack.start_redis()
            stack.apply_env()
            stack.start_worker(name="tools", queues="discover,tools", pool="gevent", concurrency=50, wait=False)
            stack.start_worker(name="llm", queues="llm", pool="threads", concurrency=2, wait=False)
            processes.wait_for_worker(stack.env, count=2)
            stack.start_web()
            time_turns(stack, 3)  # warm-up: sessions open, tool lists cached
            execute, wall = time_turns(stack, args.turns)
            sequential = time_sequential(url, args.turns)
        finally:
            stack.stop()
            server.stop()
    print(summary("execute step, 3 tools in parallel", execute))
    print(summary("whole turn (POST -> done)", wall))
    print(summary("3 calls one after another", sequential))
    parallel_p50, sequential_p50 = percentile(execute, 50), percentile(sequential, 50)
    print(f"parallel execute p50 vs 3 x {LATENCY_MS} ms sequential p50: {sequential_p50 / parallel_p50:.2f}x faster "
          f"({parallel_p50:.0f} ms vs {sequential_p50:.0f} ms)")


if __name__ == "__main__":
    main()
