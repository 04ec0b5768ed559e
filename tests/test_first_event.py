"""A busy system still shows a new turn at once: its stream opens with `accepted`, logged by the web
tier before the 202, and its first step goes to a queue of its own that workers serve before the
tool-call backlog (README, "Stream events" and "Queues and scaling").

The stack here starts without a worker, so what a stream shows before any worker runs, and what a
worker takes first from a backlog, are both observed rather than raced."""

import uuid

import httpx

from shared import defaults, keys
from shared.celery_config import make_celery, queues
from shared.cli.processes import worker_specs
from shared.settings import Settings
from shared.turn_flow import task_name
from shared.vocabulary import CALL_TOOL, DISCOVER
from tests.sse import bearer, post_prompt, read_stream
from tests.stack import Stack

BACKLOG = 30


def backlog_of_tool_calls(stack: Stack, session_id: str, n: int) -> None:
    """n tool calls of another turn, waiting on the tools queue (each only reports an error: no tool runs)."""
    app = make_celery("test-backlog", Settings(broker_redis_url=stack.env["BROKER_REDIS_URL"]))
    try:
        ref = {"session_id": session_id, "message_id": "backlog", "user": "bob", "tenant": "acme", "roles": []}
        for i in range(n):
            call = {"call_id": f"b{i}", "tool": "calculator", "args": {}, "error": "queued behind nothing"}
            app.send_task(task_name(CALL_TOOL), args=(ref, call), ignore_result=True)
    finally:
        app.close()


def log_ids(stack: Stack, session_id: str, message_id: str) -> list[tuple[str, str]]:
    """(entry id, type) of every event in a turn's log, oldest first."""
    return [(entry_id, fields["type"])
            for entry_id, fields in stack.client("progress").xrange(keys.progress_log(session_id, message_id))]


def order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def test_a_new_turn_is_accepted_on_its_stream_before_any_worker_runs_it(idle_stack):
    session_id = "s" + uuid.uuid4().hex[:12]
    body = post_prompt(idle_stack.base_url, session_id, "calculate 6 * 7").json()
    first = read_stream(idle_stack.base_url, body["stream_url"], limit=1)
    assert [(e.type, e.data) for e in first] == [("accepted", {"status": "queued"})]
    polled = httpx.get(f"{idle_stack.base_url}{body['status_url']}/events", headers=bearer()).json()
    assert [e["type"] for e in polled["events"]] == ["accepted"]
    assert polled["status"] == "queued"


def test_the_first_step_has_its_own_queue_served_before_any_backlog():
    assert make_celery("routes").amqp.router.route({}, task_name(DISCOVER))["queue"].name == defaults.DISCOVER_QUEUE
    assert queues()[0] == defaults.DISCOVER_QUEUE, "a worker without -Q reads the discover queue first"
    # The llm worker of the threads pool (rules, local) serves it, running reason in the same task
    # (workers.tasks.reason_here); with openai's gevent llm worker, the tools worker does.
    expected = {"rules": ("llm", defaults.LLM_QUEUE), "local": ("llm", defaults.LLM_QUEUE),
                "openai": ("tools", defaults.TOOLS_QUEUE)}
    for reasoner, (kind, its_queue) in expected.items():
        specs = worker_specs(reasoner)
        assert specs[kind].queues.split(",") == [defaults.DISCOVER_QUEUE, its_queue]
        assert [name for name, spec in specs.items() if defaults.DISCOVER_QUEUE in spec.queues.split(",")] == [kind]


def test_a_worker_starts_a_new_turn_before_the_tool_call_backlog_and_its_stream_opens_with_accepted(idle_stack):
    backlog_session = "s" + uuid.uuid4().hex[:12]
    backlog_of_tool_calls(idle_stack, backlog_session, BACKLOG)
    session_id = "s" + uuid.uuid4().hex[:12]
    body = post_prompt(idle_stack.base_url, session_id, "calculate 6 * 7").json()

    # One slot, so the worker takes one message at a time: the order it takes them is the order they start.
    queues = ",".join((defaults.DISCOVER_QUEUE, defaults.TOOLS_QUEUE, defaults.LLM_QUEUE))
    idle_stack.start_worker(name="one-slot", **{"queues": queues, "pool": "threads", "concurrency": 1})
    events = read_stream(idle_stack.base_url, body["stream_url"], timeout=120)

    assert events[0].type == "accepted"
    assert (events[1].type, events[1].data["step"], events[1].data["status"]) == ("step", "discover", "started")
    assert events[-1].type == "done" and events[-1].data["answer"] == "6 * 7 = 42."
    discover_started = events[1].id
    backlog = [entry_id for entry_id, kind in log_ids(idle_stack, backlog_session, "backlog") if kind == "tool"]
    assert backlog, "the backlog ran too"
    assert all(order(entry_id) > order(discover_started) for entry_id in backlog), \
        "no tool call of the backlog ran before the new turn's first step"
