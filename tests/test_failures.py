"""How a turn fails, read as a user reads it: one `error` event whose message is one sentence
naming the step and the cause. Real workers in every pool, a real stdio server that exits at
once, a URL where nothing listens, a model server that answers 500, a step past its time
limit, and a worker child killed by a signal until its message is given up on."""

import json
import os
import signal
import sys
from contextlib import contextmanager

import psutil
import pytest
import redis

from shared.cli import processes
from shared.failures import StepFailed
from tests.fake_openai import FakeOpenAI
from tests.sse import post_prompt, read_stream
from tests.stack import Stack
from tests.test_chaos import restore_env, wait_for

SOFT_LIMIT_S, HARD_LIMIT_S = 3, 5


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """Redis and the web app; each test starts the worker it needs, with its own settings."""
    saved_env = dict(os.environ)
    stack = Stack(tmp_path_factory.mktemp("failures"), TURNSTREAM_TASK_SOFT_TIME_LIMIT_S=str(SOFT_LIMIT_S),
                  TURNSTREAM_TASK_TIME_LIMIT_S=str(HARD_LIMIT_S), TURNSTREAM_VISIBILITY_TIMEOUT_S="60",
                  TURNSTREAM_REDELIVERY_SWEEP_S="600", TURNSTREAM_WORKER_SOFT_SHUTDOWN_S="1")
    try:
        stack.start_redis()
        stack.apply_env()
        stack.start_web()
        yield stack
    finally:
        stack.stop()
        restore_env(saved_env)


@contextmanager
def worker(system: Stack, name: str, pool: str = "threads", concurrency: int = 2, **env: str):
    executor = processes.celery_worker({**system.env, **env}, system.log_dir, name=name, pool=pool,
                                       concurrency=concurrency).start()
    try:
        processes.wait_for_worker(system.env)
        yield executor
    finally:
        executor.kill(sig=signal.SIGKILL)  # a step may still hang in it: nothing of it is needed any more


def failed_turn(system: Stack, session_id: str, prompt: str) -> tuple[dict, dict]:
    """Post a prompt; the stream's last event and the turn's status record."""
    response = post_prompt(system.base_url, session_id, prompt)
    assert response.status_code == 202, response.text
    body = response.json()
    events = read_stream(system.base_url, body["stream_url"], timeout=90)
    record = system.client("broker").hgetall(f"agent:turn:{session_id}:{body['message_id']}")
    return {"type": events[-1].type, **events[-1].data}, record


def test_a_step_failure_survives_celerys_exception_serialization():
    """What the chain's errback gets is what the result backend makes of the exception."""
    from workers.celery_app import app

    backend = app.backend
    stored = backend.prepare_exception(StepFailed("reason", "the model server answered HTTP 500"), "json")
    again = backend.exception_to_python(json.loads(json.dumps(stored)))
    assert isinstance(again, StepFailed) and again.step == "reason"
    assert str(again) == "Reasoning failed: the model server answered HTTP 500."


def test_a_model_server_error_reads_as_one_sentence(system):
    with FakeOpenAI() as fake, worker(system, "openai", TURNSTREAM_REASONER="openai",
                                      TURNSTREAM_OPENAI_BASE_URL=fake.base_url):
        event, record = failed_turn(system, "fail-model", "weather in Paris, and fail later")
    assert event["type"] == "error"
    assert event["message"] == f"Reasoning failed: the model server at {fake.base_url} answered HTTP 500."
    assert event["step"] == "reason"
    assert record["status"] == "failed" and record["error"] == event["message"]


@pytest.mark.parametrize("pool", ["gevent", "prefork"])  # the pools whose limit Celery enforces (the chain's errback)
@pytest.mark.timeout(180)
def test_a_step_run_inside_another_task_is_named_for_itself(system, pool):
    """Round 2's reason runs inside the `collect` task (workers.tasks). The model hangs there past
    the task's time limit: what failed is reasoning, not calling tools."""
    with FakeOpenAI() as fake, worker(system, f"hang-{pool}", pool=pool, TURNSTREAM_REASONER="openai",
                                      TURNSTREAM_OPENAI_BASE_URL=fake.base_url, TURNSTREAM_REASONER_TIMEOUT_S="60"):
        event, record = failed_turn(system, f"hang-round-2-{pool}", "weather in Paris, silent later")
    limit = f"{HARD_LIMIT_S} s (TURNSTREAM_TASK_TIME_LIMIT_S)" if pool == "gevent" else \
        f"{SOFT_LIMIT_S} s (TURNSTREAM_TASK_SOFT_TIME_LIMIT_S)"
    assert event == {"type": "error", "step": "reason",
                     "message": f"Reasoning failed: the step ran past its time limit of {limit}."}
    assert record["status"] == "failed" and record["error"] == event["message"]


def test_a_crash_names_the_worker_its_task_runs_on():
    """`collect` is a part of execute but runs on the llm queue: its crashes are the llm worker's."""
    from shared.failures import crash_cause
    assert crash_cause("turnstream.collect", 3) == "the llm worker crashed 3 times in this step"
    assert crash_cause("turnstream.call_tool", 1, "while calling weather") == \
        "the tools worker crashed once while calling weather"
    assert crash_cause("turnstream.discover", 2) == "the tools worker crashed 2 times in this step"


def test_dead_mcp_servers_are_named_with_their_first_real_error(system):
    nobody = processes.free_port()
    exits_at_once = ("import sys; sys.stderr.write('starting the tools server\\n'); "
                     "sys.stderr.write('fatal: the tools database is missing\\n'); sys.exit(3)")
    servers = {"mcpServers": {"broken": {"command": "python", "args": ["-c", exits_at_once]},
                              "gone": {"url": f"http://127.0.0.1:{nobody}/mcp"}}}
    with worker(system, "mcp", TURNSTREAM_MCP_SERVERS=json.dumps(servers), TURNSTREAM_MCP_CONNECT_TIMEOUT_S="10"):
        event, record = failed_turn(system, "fail-mcp", "What is the weather in Paris?")
    assert event == {"type": "error", "step": "discover", "message": (
        "Finding tools failed: no MCP server answered (the MCP server broken (python) exited: fatal: the tools "
        f"database is missing; the MCP server gone at http://127.0.0.1:{nobody}/mcp: connection refused).")}
    assert record["error"] == event["message"]


@pytest.mark.parametrize(("pool", "city", "limit"), [
    ("threads", "Berlin", f"{HARD_LIMIT_S} s (TURNSTREAM_TASK_TIME_LIMIT_S)"),     # the watchdog
    ("gevent", "Madrid", f"{HARD_LIMIT_S} s (TURNSTREAM_TASK_TIME_LIMIT_S)"),     # gevent.Timeout
    ("prefork", "Tokyo", f"{SOFT_LIMIT_S} s (TURNSTREAM_TASK_SOFT_TIME_LIMIT_S)"),  # Celery's soft limit
])
@pytest.mark.timeout(240)
def test_a_step_past_its_time_limit_ends_the_turn_in_every_pool(system, pool, city, limit):
    # The weather tool answers after 20 s: the `execute` step outlives its limit.
    with worker(system, f"slow-{pool}", pool=pool, TURNSTREAM_TOOL_LATENCY_MS="20000"):
        event, record = failed_turn(system, f"slow-{pool}", f"What is the weather in {city}?")
    assert event == {"type": "error", "step": "execute",
                     "message": f"Calling tools failed: the step ran past its time limit of {limit}."}
    assert record["status"] == "failed" and record["error"] == event["message"]


@pytest.mark.timeout(360)  # three crashes, each followed by a new child opening its MCP session
def test_a_message_that_keeps_killing_its_worker_ends_its_turn(system):
    """A prefork child killed by SIGSEGV under the same tool call, three times: the fourth
    delivery does not run, the turn fails and says why."""
    with worker(system, "crashy", pool="prefork", concurrency=1, TURNSTREAM_TOOL_LATENCY_MS="4000",
                TURNSTREAM_TASK_SOFT_TIME_LIMIT_S="40", TURNSTREAM_TASK_TIME_LIMIT_S="50") as executor:
        response = post_prompt(system.base_url, "crashy", "What is the weather in Rome?")
        body = response.json()
        deliveries = f"agent:deliveries:crashy:{body['message_id']}"
        broker: redis.Redis = system.client("broker")
        for crash in (1, 2, 3):
            wait_for(lambda: broker.hget(deliveries, "call_tool-r1c0") == str(crash), timeout=90, interval=0.05,
                     describe=lambda: (crash, broker.hgetall(deliveries), system.log("crashy")[-1500:]))
            (child,) = psutil.Process(executor.process.pid).children()
            child.send_signal(signal.SIGSEGV)
            child.wait(10)
        events = read_stream(system.base_url, body["stream_url"], timeout=60)
        assert executor.running(), "the worker itself lives on; its pool replaced the child"
    assert (events[-1].type, events[-1].data["message"]) == (
        "error", "Calling tools failed: the tools worker crashed 3 times while calling weather.")
    assert [e.type for e in events].count("error") == 1
    assert "WorkerLostError" in system.log("crashy") or "signal 11" in system.log("crashy")


def test_the_readme_server_config_runs_python_servers_with_the_workers_interpreter():
    """`"command": "python"` is the worker's own interpreter, not the first python on PATH
    (which here has no `mcp` package)."""
    from shared.settings import Settings
    from workers.mcp.client import McpClient
    from workers.mcp.config import parse_config

    servers = parse_config(json.dumps({"mcpServers": {"builtin": {"command": "python",
                                                                  "args": ["-m", "workers.toolserver"]}}}), "test")
    assert servers["builtin"].command == sys.executable
    mcp = McpClient(Settings(tool_latency_ms=0), servers=servers)
    try:
        assert "weather" in {t["name"] for t in mcp.list_tools()}
    finally:
        mcp.close()


def test_a_stdio_server_that_cannot_start_is_named_with_its_command():
    from shared.settings import Settings
    from workers.mcp.client import McpClient
    from workers.mcp.config import parse_config

    servers = parse_config(json.dumps({"mcpServers": {"docs": {"command": "no-such-mcp-server"}}}), "test")
    client = McpClient(Settings(mcp_connect_timeout_s=5), servers=servers)
    try:
        assert client.list_tools() == []
        assert client.server_errors == {
            "docs": "the MCP server docs (no-such-mcp-server) could not start: no-such-mcp-server was not found"}
    finally:
        client.close()
