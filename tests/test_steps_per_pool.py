"""Steps share a task where a turn stays on one worker (workers.tasks), and `reason` (after
discover) and `synthesize` do so only where the watchdog holds the time limits (threads). Under prefork and gevent, which enforce
one limit per task, it is a task of its own. Either way a user sees the same turn: every step's
started/finished, each call's phases, the answer.

Which tasks ran is read from the turn's delivery counts (shared.deliveries): one field per task."""

import pytest

from shared import keys
from tests.sse import post_prompt, read_stream
from tests.stack import Stack
from tests.test_turn_e2e import shape
from tests.waiting import wait_for

ONE_CALL = [("accepted",), ("step", "discover", None, "started"), ("step", "discover", None, "finished"),
            ("step", "reason", 1, "started"), ("step", "reason", 1, "finished"),
            ("step", "execute", 1, "started"), ("tool", "r1c0", "started"), ("tool", "r1c0", "ok"),
            ("step", "execute", 1, "finished"), ("step", "reason", 2, "started"),
            ("step", "reason", 2, "finished"), ("step", "synthesize", None, "started"), ("token",),
            ("step", "synthesize", None, "finished"), ("done",)]
FOUR_TASKS = {"discover", "reason-1", "call_tool-r1c0", "collect-1"}


@pytest.mark.parametrize(("pool", "tasks"), [
    # discover runs reason 1 (this worker serves the llm queue too), collect runs reason 2,
    # which runs synthesize: three tasks
    ("threads", {"discover", "call_tool-r1c0", "collect-1"}),
    ("gevent", FOUR_TASKS | {"synthesize"}),   # one hard limit per task: each model call gets its own
    ("prefork", FOUR_TASKS | {"synthesize"}),  # likewise (Celery's soft and hard limits)
])
def test_a_turn_reads_the_same_whichever_tasks_its_steps_share(tmp_path, stack, pool, tasks):
    # `stack` sets the test secret in this process
    system = Stack(tmp_path)
    with system.running(name=f"{pool}-worker", pool=pool, concurrency=2):
        body = post_prompt(system.base_url, f"pool-{pool}", "calculate 6 * 7 + 1").json()
        events = read_stream(system.base_url, body["stream_url"], timeout=60)
        assert shape(events) == ONE_CALL
        assert events[-1].data["answer"] == "6 * 7 + 1 = 43."
        broker = system.client("broker")
        deliveries = keys.turn_deliveries(body["session_id"], body["message_id"])
        # the worker ends a delivery after it has published `done`: wait for the counts to return
        counted = wait_for(lambda: (c := broker.hgetall(deliveries)) and set(c.values()) == {"0"} and c,
                           timeout=30, describe=lambda: f"deliveries still open: {broker.hgetall(deliveries)}")
        assert set(counted) == tasks
