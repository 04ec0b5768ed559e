"""Faults with real processes: kill a Redis store or a worker during concurrent turns and check
what each domain promises (README, "Delivery and degradation").

The stack here has its own short visibility timeout, so a message stranded by a dead worker
comes back within seconds instead of ten minutes."""

import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from shared import keys
from shared.vocabulary import TOOL_FINAL_STATUSES
from tests.sse import bearer, post_prompt, read_stream
from tests.stack import Stack
from tests.waiting import wait_for

SLOW_PROMPT = "What is the weather in Paris, London and Tokyo?"
SLOW_ANSWER_START = "In Paris it is 14°C"
CITIES = ("Paris", "London", "Tokyo", "Berlin", "Rome", "Madrid")  # one per turn: no cache hit among them
TURNS = len(CITIES)
# Per read, for a loaded 2-core machine: longer than an SSE heartbeat (15 s), so an open stream
# that is still waiting is never mistaken for a dead one.
HTTP_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    saved_env = dict(os.environ)
    base_dir = tmp_path_factory.mktemp("chaos")
    # Weather results live 1 s: each test's burst of turns really calls the tools (and is in
    # flight when a store dies) instead of reading what the previous test cached.
    tools_file = base_dir / "tool-cache.toml"
    tools_file.write_text('[global]\nvolatile = []\n\n[tools.weather]\ncacheable = true\nscope = "global"\nttl_s = 1\n')
    system = Stack(base_dir, TURNSTREAM_TOOL_LATENCY_MS="800", TURNSTREAM_EXEC_CACHE_TOOLS_FILE=str(tools_file),
                   TURNSTREAM_VISIBILITY_TIMEOUT_S="8", TURNSTREAM_TASK_SOFT_TIME_LIMIT_S="5",
                   TURNSTREAM_TASK_TIME_LIMIT_S="6", TURNSTREAM_UNACKED_RESTORE_INTERVAL_S="1",
                   TURNSTREAM_BREAKER_RESET_S="1", TURNSTREAM_WORKER_BROKER_WAIT_S="30",
                   TURNSTREAM_REDELIVERY_SWEEP_S="1",
                   # A dead worker's exec-cache leases lapse well within the 6 s step limit, so the
                   # call redelivered after it waits for them less than its step may run.
                   TURNSTREAM_EXEC_CACHE_LEASE_S="2")
    try:
        with system.running(apply_env=True):
            yield system
    finally:
        restore_env(saved_env)


def restore_env(saved: dict[str, str]) -> None:
    """Point this process back at what it used before (the session stack), for the modules after this one."""
    from shared.redis_stores import reset_clients
    from shared.settings import reload_settings

    os.environ.clear()
    os.environ.update(saved)
    reload_settings()
    reset_clients()


def post_many(base_url: str, prefix: str) -> list[httpx.Response]:
    """TURNS turns at once, the i-th asking for the weather in CITIES[i]."""
    with ThreadPoolExecutor(TURNS) as pool:
        return list(pool.map(lambda i: post_prompt(base_url, f"{prefix}{i}", f"What is the weather in {CITIES[i]}?"),
                             range(TURNS)))


def burst(chaos: Stack, prefix: str) -> list[dict]:
    """post_many, for turns that must really call their tools while a plug is pulled: no result an
    earlier test cached is left (weather results live 1 s, and that test may have ended less than
    a second ago, which let a whole burst finish from the cache before it could be caught running)."""
    chaos.client("exec_cache").flushdb()
    return [r.json() for r in post_many(chaos.base_url, prefix)]


def answered(records: list[dict]) -> bool:
    """Every turn done, each with the answer for its own city."""
    return all(r["status"] == "done" and r["answer"].startswith(f"In {city} it is") for r, city in zip(records, CITIES))




def snapshot(chaos: Stack, bodies: list[dict], field: str) -> list[str | None]:
    """One field of every turn's record, read from the broker in one round trip. Waits for a
    moment to pull a plug read this way: the moment lasts about one tool call, and status
    requests to the web tier on a loaded machine can take longer than that."""
    pipe = chaos.client("broker").pipeline(transaction=False)
    for body in bodies:
        pipe.hget(keys.turn_record(body["session_id"], body["message_id"]), field)
    return pipe.execute()


def wait_until_executing(chaos: Stack, body: dict) -> None:
    """Until the turn is calling its tools."""
    wait_for(lambda: snapshot(chaos, [body], "step") == ["execute"], interval=0.02,
             describe=lambda: snapshot(chaos, [body], "status"))


def wait_until_running(chaos: Stack, bodies: list[dict]) -> None:
    """Until every turn has started and most are still running: the moment to pull a plug."""
    def started_and_running() -> bool:
        states = snapshot(chaos, bodies, "status")
        return "queued" not in states and states.count("running") > len(states) // 2
    wait_for(started_and_running, interval=0.02, describe=lambda: snapshot(chaos, bodies, "status"))


def status(base_url: str, body: dict) -> dict:
    return httpx.get(base_url + body["status_url"], headers=bearer(), timeout=HTTP_TIMEOUT).json()


def wait_until_final(base_url: str, bodies: list[dict], timeout: float = 120.0) -> list[dict]:
    def all_final():
        records = [status(base_url, b) for b in bodies]
        return records if all(r.get("status") in ("done", "failed", "cancelled") for r in records) else None

    def unfinished() -> str:
        return "; ".join(f"{b['message_id']}: {r.get('status')} at {r.get('step')}"
                         for b in bodies if (r := status(base_url, b)).get("status") not in ("done", "failed", "cancelled"))
    return wait_for(all_final, timeout, interval=0.5, describe=unfinished)


def logged_events(chaos: Stack, body: dict) -> list[tuple[str, dict]]:
    entries = chaos.client("progress").xrange(f"agent:progress-log:{{{body['session_id']}:{body['message_id']}}}")
    return [(fields["type"], json.loads(fields["data"])) for _, fields in entries]


def terminal_events(chaos: Stack, body: dict) -> list[str]:
    return [kind for kind, _ in logged_events(chaos, body) if kind in ("done", "error", "cancelled")]


def logged_terminal_events(chaos: Stack, body: dict) -> list[str]:
    """terminal_events once the log has one. A turn's events made while the web or a worker
    could not reach the progress Redis (its breaker still open after an outage) wait in the
    outbox on the broker, and reach the log, in order, once both answer: as a stream shows them."""
    return wait_for(lambda: terminal_events(chaos, body), timeout=30, interval=0.2,
                    describe=lambda: f"{body['message_id']} logged {[k for k, _ in logged_events(chaos, body)]}")


def test_cancelling_a_running_turn_ends_its_stream_and_skips_its_remaining_steps(chaos):
    base = chaos.base_url
    body = post_prompt(base, "cancel1", SLOW_PROMPT).json()
    wait_until_executing(chaos, body)
    response = httpx.delete(base + body["status_url"], headers=bearer(), timeout=HTTP_TIMEOUT)
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"

    events = read_stream(base, body["stream_url"])
    assert events[-1].type == "cancelled"
    # The step after the running one sees the status and stops the turn's flow there.
    wait_for(lambda: f"turn cancel1/{body['message_id']} is cancelled: skipping" in chaos.log("worker"))
    assert status(base, body)["status"] == "cancelled"
    assert ("synthesize", "started") not in [(d.get("step"), d.get("status")) for k, d in logged_events(chaos, body)]
    assert terminal_events(chaos, body) == ["cancelled"]
    again = httpx.delete(base + body["status_url"], headers=bearer(), timeout=HTTP_TIMEOUT)
    assert again.status_code == 200  # idempotent


def test_progress_down_turns_complete_and_streams_recover(chaos):
    base = chaos.base_url
    bodies = burst(chaos, "prog")
    wait_until_running(chaos, bodies)
    chaos.redis["progress"].kill(sig=9)
    try:
        late = post_prompt(base, "prog-late", SLOW_PROMPT)
        assert late.status_code == 202, "the broker is up, so turns are still accepted"
        bodies.append(late.json())
        records = wait_until_final(base, bodies)
        assert answered(records[:TURNS])
        assert records[-1]["status"] == "done" and records[-1]["answer"].startswith(SLOW_ANSWER_START)
        polled = httpx.get(base + bodies[0]["status_url"] + "/events", headers=bearer(), timeout=HTTP_TIMEOUT).json()
        assert polled["status"] == "done" and polled["progress_unavailable"] is True
        assert "progress Redis failed 3 times in a row: breaker open" in chaos.log("worker")
        ready = httpx.get(f"{base}/readyz", timeout=HTTP_TIMEOUT).json()
        assert ready["ready"] is True and ready["stores"]["progress"].startswith("unavailable")
    finally:
        chaos.restart_redis("progress")

    for body, record in zip(bodies, records):
        events = wait_for(lambda: read_stream(base, body["stream_url"], timeout=HTTP_TIMEOUT))
        assert events[-1].type == "done"
        assert events[-1].data["answer"] == record["answer"]
        assert terminal_events(chaos, body) == ["done"]


def test_broker_down_new_turns_get_503_and_accepted_ones_complete_after_it_returns(chaos):
    base = chaos.base_url
    accepted = burst(chaos, "brok")
    wait_until_running(chaos, accepted)
    chaos.redis["broker"].kill(sig=9)
    try:
        refused = post_prompt(base, "brok-refused", SLOW_PROMPT)
        assert refused.status_code == 503
        assert refused.json()["error"] == "unavailable"
        assert int(refused.headers["Retry-After"]) > 0
        assert httpx.get(f"{base}/readyz", timeout=HTTP_TIMEOUT).status_code == 503
    finally:
        chaos.restart_redis("broker")

    records = wait_until_final(base, accepted, timeout=90)
    assert answered(records)
    for body in accepted:
        assert logged_terminal_events(chaos, body) == ["done"], "exactly one final answer per turn"
    refused_session = httpx.get(f"{base}/api/sessions/brok-refused/messages", headers=bearer(), timeout=HTTP_TIMEOUT)
    assert refused_session.status_code == 404
    after = post_prompt(base, "brok-after", "calculate 1 + 2")
    assert after.status_code == 202
    assert read_stream(base, after.json()["stream_url"])[-1].data["answer"] == "1 + 2 = 3."


def test_a_broker_outage_longer_than_a_step_may_run_fails_no_turn(chaos):
    """Steps that wait out a broker outage are not running past their time limit: when the
    outage outlasts the limit (6 s here), each hands its message back instead of failing its
    turn, and every accepted turn is answered once after the broker returns."""
    base = chaos.base_url
    accepted = burst(chaos, "brlong")
    wait_until_running(chaos, accepted)
    chaos.redis["broker"].kill(sig=9)
    try:
        time.sleep(9)
    finally:
        chaos.restart_redis("broker")

    records = wait_until_final(base, accepted, timeout=90)
    assert answered(records), [(r["status"], r.get("error")) for r in records]
    for body in accepted:
        assert logged_terminal_events(chaos, body) == ["done"], "exactly one final answer per turn"


def test_a_turn_whose_message_was_lost_is_sent_again_and_answered_once(chaos):
    """What kombu's Redis transport can do when the broker dies just as a worker pops a message:
    the turn is recorded and in flight, but no message for it exists. Workers send it again."""
    from shared import turns
    from shared.identity import Principal

    principal = Principal(user="alice", tenant="acme", roles=("analyst",))
    session_id, message_id = "lost1", uuid.uuid4().hex
    payload = {"session_id": session_id, "message_id": message_id, "prompt": "calculate 6 * 7",
               "user": "alice", "tenant": "acme", "roles": ["analyst"]}
    turns.claim_session(session_id, principal)
    turns.create_turn(session_id, message_id, principal, payload["prompt"], payload=payload)
    body = {"session_id": session_id, "message_id": message_id,
            "status_url": f"/api/sessions/{session_id}/messages/{message_id}"}

    record = wait_until_final(chaos.base_url, [body], timeout=60)[0]
    assert record["status"] == "done" and record["answer"] == "6 * 7 = 42."
    assert f"turn {session_id}/{message_id} made no progress" in chaos.log("worker") + chaos.log("replacement")
    assert terminal_events(chaos, body) == ["done"]
    assert not chaos.client("broker").zscore("agent:turns-in-flight", f"{session_id}:{message_id}")


@pytest.mark.parametrize("store", ["exec_cache", "auth_memo"])
def test_a_dead_cache_store_blocks_no_turn(chaos, store):
    """The exec cache and the auth memo only save work: with either down, turns run as usual."""
    base = chaos.base_url
    chaos.redis[store].kill(sig=9)
    try:
        responses = post_many(base, f"{store.replace('_', '')}-")
        assert [r.status_code for r in responses] == [202] * TURNS
        bodies = [r.json() for r in responses]
        assert answered(wait_until_final(base, bodies))
        assert all(terminal_events(chaos, b) == ["done"] for b in bodies)
        tool_events = [d for b in bodies for kind, d in logged_events(chaos, b)
                       if kind == "tool" and d["status"] in TOOL_FINAL_STATUSES]
        assert tool_events and all(d["status"] == "ok" for d in tool_events)
        if store == "exec_cache":
            assert {d["cache"] for d in tool_events} == {"bypass"}, "tools run uncached"
        else:
            assert {d["permission"]["memo"] for d in tool_events} == {"bypass"}, "the verifier is asked directly"
        ready = httpx.get(f"{base}/readyz", timeout=HTTP_TIMEOUT).json()
        assert ready["ready"] is True and ready["stores"][store].startswith("unavailable")
    finally:
        chaos.restart_redis(store)


def test_a_worker_killed_mid_turn_leaves_exactly_one_answer(chaos):
    base = chaos.base_url
    # No weather result an earlier test cached (they live 1 s): a turn answered from the cache
    # ends in milliseconds, before it can be caught calling its tools.
    chaos.client("exec_cache").flushdb()
    body = post_prompt(base, "kill9", SLOW_PROMPT).json()
    wait_until_executing(chaos, body)
    victim = chaos.workers[-1]
    victim.kill(sig=9)
    assert not victim.running()
    chaos.start_worker(name="replacement")

    record = wait_until_final(base, [body], timeout=90)[0]
    assert record["status"] == "done" and record["answer"].startswith(SLOW_ANSWER_START), record
    events = logged_events(chaos, body)
    assert [k for k, _ in events if k in ("done", "error", "cancelled")] == ["done"]
    steps = [(d["step"], d.get("round"), d["status"]) for k, d in events if k == "step"]
    assert len(steps) == len(set(steps)), "a redelivered step does not log its events twice"
    started = {(step, round_) for step, round_, state in steps if state == "started"}
    assert started == {(step, round_) for step, round_, state in steps if state == "finished"}
    assert {step for step, _ in started} == {"discover", "reason", "execute", "synthesize"}
    assert sorted(d["call_id"] for k, d in events if k == "tool" and d["status"] == "ok") == ["r1c0", "r1c1", "r1c2"]
