"""Durable turns with real processes (README, "Delivery and degradation"): a worker killed with
SIGKILL in the middle of a turn, a stale redelivery of a finished step, the progress Redis dying
while a turn runs, and the idempotency key of a tool with a side effect.

The stack keeps the default visibility timeout (600 s): a turn whose worker was killed can only
come back in time through the liveness sweep (heartbeats every second here), which sends it
again from its checkpoint."""

import json
import os
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.sse import bearer, post_prompt, read_stream
from tests.stack import Stack
from tests.test_chaos import restore_env, wait_for

TICKET_PROMPT = "Open a ticket: what is the weather in Paris, and calculate 6 * 7?"
FINAL = ("done", "failed", "cancelled")


@pytest.fixture(scope="module")
def durable(tmp_path_factory):
    saved_env = dict(os.environ)
    system = Stack(tmp_path_factory.mktemp("durable"), TURNSTREAM_TOOL_LATENCY_MS="2500",
                   TURNSTREAM_HEARTBEAT_S="1", TURNSTREAM_STALL_S="10", TURNSTREAM_BREAKER_RESET_S="1")
    try:
        with system.running(apply_env=True, name="first"):
            system.start_worker(name="second")
            yield system
    finally:
        restore_env(saved_env)


def admin() -> dict:
    return bearer(user="alice", roles=("admin",))


def status(stack: Stack, body: dict) -> dict:
    return httpx.get(stack.base_url + body["status_url"], headers=admin(), timeout=10).json()


def wait_final(stack: Stack, body: dict, timeout: float = 120) -> dict:
    return wait_for(lambda: (lambda r: r if r.get("status") in FINAL else None)(status(stack, body)), timeout, 0.5)


def logged(stack: Stack, body: dict) -> list[tuple[str, dict]]:
    from shared import keys

    entries = stack.client("progress").xrange(keys.progress_log(body["session_id"], body["message_id"]))
    return [(fields["type"], json.loads(fields["data"])) for _, fields in entries]


PHASES = ("started", "running")  # a tool call's live phases, before its outcome


def signatures(events: list[tuple[str, dict]]) -> list[tuple]:
    """Steps, tool outcomes and the end, in log order (the web tier's `accepted`, answer tokens and a
    call's live phases left out)."""
    return [(k, d.get("step"), d.get("status"), d.get("round"), d.get("call_id")) for k, d in events
            if k not in ("token", "accepted") and not (k == "tool" and d.get("status") in PHASES)]


def journal(stack: Stack, body: dict) -> dict[str, str]:
    return stack.client("broker").hgetall(f"agent:turn-calls:{body['session_id']}:{body['message_id']}")


def tickets_of(stack: Stack, body: dict) -> list[dict]:
    path = stack.base_dir / "tickets.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    prefix = f"{body['session_id']}/{body['message_id']}/"
    return [t for t in map(json.loads, lines) if t.get("idempotency_key", "").startswith(prefix)]


def reasoner_calls(stack: Stack) -> dict[str, float]:
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(stack.base_dir / "metrics"))
    return {sample.labels["kind"]: sample.value for metric in registry.collect()
            if metric.name == "turnstream_reasoner_calls" for sample in metric.samples if sample.name.endswith("_total")}


def pid_of(worker_id: str) -> int:
    return int(worker_id.rsplit("-", 2)[1])


def expected_steps() -> list[tuple]:
    return [("step", "discover", "started", None, None), ("step", "discover", "finished", None, None),
            ("step", "reason", "started", 1, None), ("step", "reason", "finished", 1, None),
            ("step", "execute", "started", 1, None)]


def test_a_worker_killed_during_a_tool_call_resumes_from_the_checkpoint_and_opens_one_ticket(durable):
    before = reasoner_calls(durable)
    body = post_prompt(durable.base_url, "kill-tool", TICKET_PROMPT, headers=admin()).json()
    holder = wait_for(lambda: next((v for k, v in journal(durable, body).items() if k.endswith(":started")), None),
                      timeout=60, interval=0.05)
    victim = next(w for w in durable.workers if w.process and w.process.pid == pid_of(holder))
    psutil.Process(victim.process.pid).kill()
    durable.start_worker(name="replacement")

    record = wait_final(durable, body)
    assert record["status"] == "done"
    assert "died holding turn kill-tool/" in durable.log("first") + durable.log("second") + durable.log("replacement")
    assert len(tickets_of(durable, body)) == 1, "the ticket was opened once"
    assert tickets_of(durable, body)[0]["ticket_id"] in record["answer"]
    events = logged(durable, body)
    seen = signatures(events)
    assert len(seen) == len(set(seen)), "no event twice"
    assert seen[:5] == expected_steps(), "discover and reason ran once: the turn resumed at execute"
    assert sorted(d["call_id"] for k, d in events if k == "tool" and d["status"] not in PHASES) == ["r1c0", "r1c1", "r1c2"]
    after = reasoner_calls(durable)
    # Two decisions (round 1 picks the tools, round 2 picks none) and one answer: nothing asked twice.
    assert after.get("decide", 0) - before.get("decide", 0) == 2
    assert after.get("answer", 0) - before.get("answer", 0) == 1


def test_a_stale_delivery_of_a_finished_reason_step_does_not_ask_the_reasoner_again(durable):
    from celery import Celery

    from shared.celery_config import make_celery

    body = post_prompt(durable.base_url, "stale", TICKET_PROMPT, headers=admin()).json()
    key = f"agent:turn:{body['session_id']}:{body['message_id']}"
    wait_for(lambda: durable.client("broker").hget(key, "next_task") == "collect", timeout=60, interval=0.05)
    before = reasoner_calls(durable)
    state = json.loads(durable.client("broker").hget(key, "checkpoint"))
    app: Celery = make_celery("stale-sender")
    app.send_task("turnstream.reason", args=({**state, "pending": []},))  # round 1 again, as a redelivery would
    record = wait_final(durable, body)
    assert record["status"] == "done"
    workers_log = "".join(durable.log(name) for name in ("first", "second", "replacement"))
    assert f"turn stale/{body['message_id']}: reason (round 1) is done already" in workers_log
    after = reasoner_calls(durable)
    assert after.get("decide", 0) - before.get("decide", 0) == 1, "only round 2 asked the reasoner"
    assert len(tickets_of(durable, body)) == 1


def test_events_published_while_the_progress_redis_is_down_reach_the_log_in_order(durable):
    body = post_prompt(durable.base_url, "outbox", TICKET_PROMPT, headers=admin()).json()
    wait_for(lambda: status(durable, body).get("step") == "execute", timeout=60, interval=0.05)
    durable.redis["progress"].kill(sig=9)
    try:
        record = wait_final(durable, body)  # the turn finishes while its events wait in an outbox
        assert record["status"] == "done"
        assert int(durable.client("broker").get(f"agent:outbox-pending:outbox:{body['message_id']}") or 0) > 0
    finally:
        durable.restart_redis("progress")
    # What the progress Redis logged before it died is in its AOF; what was made while it was
    # down comes from the outbox: every event once, in the order it was made.
    events = read_stream(durable.base_url, body["stream_url"], timeout=60)  # a stream opened afresh
    assert events[-1].type == "done" and events[-1].data["answer"] == record["answer"]
    kinds = signatures([(e.type, e.data) for e in events])
    assert len(kinds) == len(set(kinds))
    assert kinds[:5] == expected_steps()
    assert sorted(k[4] for k in kinds[5:8]) == ["r1c0", "r1c1", "r1c2"] and {k[0] for k in kinds[5:8]} == {"tool"}
    assert kinds[8:] == [("step", "execute", "finished", 1, None), ("step", "reason", "started", 2, None),
                         ("step", "reason", "finished", 2, None), ("step", "synthesize", "started", None, None),
                         ("step", "synthesize", "finished", None, None), ("done", None, None, None, None)]
    assert "".join(e.data["text"] for e in events if e.type == "token") == record["answer"]


def test_the_outbox_is_bounded_and_counts_what_it_could_not_keep(durable, monkeypatch):
    from shared import metrics, outbox
    from shared.events import StepEvent
    from shared.progress import render
    from shared.settings import get_settings

    monkeypatch.setattr(get_settings(), "progress_outbox_max", 2)
    full = metrics.OUTBOX_OVERFLOW.labels(reason="full")
    counted = full._value.get()
    rendered = render(StepEvent(step="discover", status="started"))
    kept = [outbox.keep("bounded", f"m{i}", rendered, "discover-started") for i in range(3)]
    assert kept == [True, True, False]
    assert full._value.get() == counted + 1
    outbox.flush()  # or a worker's beat does: the outbox is shared
    for i, published in ((0, ["step"]), (1, ["step"]), (2, [])):
        wait_for(lambda: [k for k, _ in logged(durable, {"session_id": "bounded", "message_id": f"m{i}"})] == published,
                 timeout=30)
    wait_for(lambda: not outbox.holding(), timeout=30)


def test_create_ticket_honours_the_idempotency_key(tmp_path):
    from workers.toolserver import tools

    admin_caller = tools.Caller(user="alice", tenant="acme", roles=("admin",))
    path = tmp_path / "tickets.jsonl"
    first = tools.create_ticket(admin_caller, "broken", tickets_file=path, idempotency_key="s/m/r1c0")
    again = tools.create_ticket(admin_caller, "broken", tickets_file=path, idempotency_key="s/m/r1c0")
    other = tools.create_ticket(admin_caller, "broken", tickets_file=path, idempotency_key="s/m/r1c1")
    unkeyed = [tools.create_ticket(admin_caller, "broken", tickets_file=path) for _ in range(2)]
    assert again == first and other["ticket_id"] != first["ticket_id"]
    assert unkeyed[0]["ticket_id"] != unkeyed[1]["ticket_id"], "without a key every call opens a ticket"
    assert len(Path(path).read_text().splitlines()) == 4


def test_a_tool_server_dying_under_a_call_gets_the_call_again_with_the_same_key(durable):
    body = post_prompt(durable.base_url, "lost-session", TICKET_PROMPT, headers=admin()).json()
    holder = wait_for(lambda: journal(durable, body).get("r1c2:started"), timeout=60, interval=0.05)
    worker = psutil.Process(pid_of(holder))
    servers = [c for c in worker.children(recursive=True) if "workers.toolserver" in " ".join(c.cmdline())]
    assert servers, "the worker runs the built-in tool server over stdio"
    for server in servers:
        server.kill()

    record = wait_final(durable, body)
    assert record["status"] == "done"
    tickets = tickets_of(durable, body)
    assert len(tickets) == 1 and tickets[0]["ticket_id"] in record["answer"]
    assert "session lost during create_ticket; sending the call again" in "".join(
        durable.log(name) for name in ("first", "second", "replacement"))
