"""The turn record's bookkeeping in fewer round trips (issue 16), checked on the real broker: a
POST's session claim and turn record in one script, a step's checkpoint that also claims the
step run next in the same task, a claim (and a tool call's journal entry) that reads the runner
only when one stands in its way, the answer and its history entry in one script, and the
liveness thread's clean-up of a worker's turns set in one script per batch."""

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from shared import history, keys, liveness, tool_journal, turns
from shared.identity import Principal
from shared.turn_flow import Checkpoint, position
from shared.vocabulary import EXECUTE, REASON, SYNTHESIZE

ALICE = Principal(user="alice", tenant="acme", roles=("analyst",))
MALLORY = Principal(user="mallory", tenant="acme", roles=("analyst",))


def new_turn(session_id: str | None = None) -> tuple[str, str, dict]:
    session_id = session_id or f"bk{uuid.uuid4().hex[:10]}"
    message_id = uuid.uuid4().hex
    payload = {"session_id": session_id, "message_id": message_id, "prompt": "calculate 1 + 1",
               "user": "alice", "tenant": "acme", "roles": ["analyst"]}
    return session_id, message_id, payload


@pytest.fixture
def cleanup(stack) -> Iterator[list[tuple[str, str]]]:
    """Turns the test made: ended afterwards, so the session stack's sweepers leave them alone."""
    made: list[tuple[str, str]] = []
    yield made
    for session_id, message_id in made:
        turns.update_turn(session_id, message_id, stack.client("broker"), status="cancelled")


@pytest.fixture
def turn(cleanup) -> tuple[str, str]:
    session_id, message_id, payload = new_turn()
    assert turns.start_turn(session_id, message_id, ALICE, payload["prompt"], payload) == turns.CREATED
    cleanup.append((session_id, message_id))
    return session_id, message_id


def test_start_turn_claims_the_session_records_the_turn_or_names_why_not(stack, cleanup):
    broker = stack.client("broker")
    session_id, message_id, payload = new_turn()
    assert turns.start_turn(session_id, message_id, ALICE, payload["prompt"], payload) == turns.CREATED
    cleanup.append((session_id, message_id))

    record = turns.get_turn(session_id, message_id)
    assert (record.status, record.owner, record.prompt, record.payload) == ("queued", ALICE.owner, "calculate 1 + 1",
                                                                            payload)
    assert broker.get(keys.session_owner(session_id)) == ALICE.owner
    assert broker.lrange(keys.session_turns(session_id), 0, -1) == [message_id]
    assert broker.zscore(keys.turns_in_flight(), keys.in_flight_member(session_id, message_id)) is not None
    assert broker.zscore(keys.user_sessions(ALICE.tenant, ALICE.user), session_id) is not None

    # The same id again: nothing is overwritten.
    assert turns.start_turn(session_id, message_id, ALICE, "something else", payload) == turns.EXISTS
    assert turns.get_turn(session_id, message_id).prompt == "calculate 1 + 1"
    # Someone else's session: nothing is written, not even a record under a new id.
    other_id = uuid.uuid4().hex
    assert turns.start_turn(session_id, other_id, MALLORY, "mine now", None) == turns.NOT_OWNER
    assert turns.get_turn(session_id, other_id) is None
    assert broker.lrange(keys.session_turns(session_id), 0, -1) == [message_id]


def test_a_checkpoint_can_claim_the_step_that_runs_next_in_the_same_task(stack, turn):
    session_id, message_id = turn
    broker = stack.client("broker")
    assert turns.claim_step(session_id, message_id, REASON, position(REASON, 1)) == ("running", None)

    checkpoint = Checkpoint(EXECUTE, 1, {"pending": []})
    assert turns.save_checkpoint(session_id, message_id, position(REASON, 1), checkpoint, claim_next=EXECUTE) == "saved"
    fields = broker.hgetall(keys.turn_record(session_id, message_id))
    assert (fields["status"], fields["step"], fields["runner"]) == ("running", EXECUTE, liveness.worker_id())
    assert int(fields["runner_pos"]) == int(fields["next_pos"]) == position(EXECUTE, 1)
    assert float(fields["held_until"]) > time.time()
    # What claim_step would have left: this process holds execute against another live worker...
    broker.zadd(keys.worker_heartbeats(), {liveness.worker_id(): time.time()})
    other = subprocess.run([sys.executable, "-c", (
        "from shared import turns; from shared.turn_flow import position; from shared.vocabulary import EXECUTE; "
        f"print(turns.claim_step('{session_id}', '{message_id}', EXECUTE, position(EXECUTE, 1))[0])")],
        capture_output=True, text=True, env=os.environ, check=True)
    assert other.stdout.strip() == "held"
    # ...and a checkpoint without a next step leaves the runner's position where its claim put it.
    assert turns.save_checkpoint(session_id, message_id, position(EXECUTE, 1),
                                 Checkpoint(SYNTHESIZE, None, {})) == "saved"
    assert int(broker.hget(keys.turn_record(session_id, message_id), "runner_pos")) == position(EXECUTE, 1)


def test_a_claim_takes_over_from_a_runner_of_this_host_whose_process_is_gone(stack, turn):
    """The runner still beats (its heartbeat is fresh) but its process no longer exists here:
    the claim reads the runner, finds it gone and claims (the one path that reads first)."""
    session_id, message_id = turn
    broker = stack.client("broker")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = liveness.worker_id().partition("-")[0]
    dead_runner = f"{host}-{gone.stdout.strip()}-abcdef"
    assert liveness.gone_from_this_host(dead_runner)
    broker.hset(keys.turn_record(session_id, message_id),
                mapping={"status": "running", "step": EXECUTE, "runner": dead_runner,
                         "runner_pos": position(EXECUTE, 1), "held_until": time.time() + 60})
    broker.zadd(keys.worker_heartbeats(), {dead_runner: time.time()})
    try:
        assert turns.claim_step(session_id, message_id, EXECUTE, position(EXECUTE, 1)) == ("running", None)
        assert broker.hget(keys.turn_record(session_id, message_id), "runner") == liveness.worker_id()
    finally:
        broker.zrem(keys.worker_heartbeats(), dead_runner)


def test_the_liveness_thread_forgets_moved_turns_and_keeps_the_rest(stack, cleanup):
    broker = stack.client("broker")
    worker = f"bk-{uuid.uuid4().hex[:8]}"
    made = {}
    for name in ("running_here", "moved_on", "final", "received_claimed", "received_waiting", "tool_call"):
        session_id, message_id, payload = new_turn()
        assert turns.start_turn(session_id, message_id, ALICE, payload["prompt"], payload) == turns.CREATED
        cleanup.append((session_id, message_id))
        made[name] = (session_id, message_id)
    record = keys.turn_record
    broker.hset(record(*made["running_here"]), "runner", worker)
    broker.hset(record(*made["moved_on"]), "runner", "another-worker")
    broker.hset(record(*made["final"]), mapping={"runner": worker, "status": "done"})
    broker.hset(record(*made["received_claimed"]), "runner", worker)
    broker.hset(record(*made["tool_call"]), "runner", "another-worker")
    members = {name: keys.in_flight_member(*ids) for name, ids in made.items()}
    for name in ("received_claimed", "received_waiting"):
        members[name] += f":{liveness.RECEIVED}"
    members["tool_call"] += ":r1c0"
    broker.sadd(keys.worker_turns(worker), *members.values())
    batch = [(members[name], *made[name], name.startswith("received")) for name in made if name != "tool_call"]

    assert turns.forget_moved(worker, batch) == 3
    assert broker.smembers(keys.worker_turns(worker)) == {members["running_here"], members["received_waiting"],
                                                          members["tool_call"]}
    broker.delete(keys.worker_turns(worker))


def test_the_answer_and_its_history_entry_are_written_by_the_one_call_that_finishes_the_turn(stack, turn, cleanup):
    session_id, message_id = turn
    broker = stack.client("broker")
    assert history.finish_with_answer(session_id, message_id, ALICE.owner, "calculate 1 + 1", "2",
                                      ["calculator"]) == ("done", True)
    # A redelivery finishing it again changes nothing and remembers nothing twice.
    assert history.finish_with_answer(session_id, message_id, ALICE.owner, "calculate 1 + 1", "3", []) == ("done", False)
    record = turns.get_turn(session_id, message_id)
    assert (record.status, record.answer) == ("done", "2")
    assert history.recall(session_id, ALICE.owner) == [
        {"owner": ALICE.owner, "prompt": "calculate 1 + 1", "answer": "2", "tools": ["calculator"]}]
    assert broker.zscore(keys.turns_in_flight(), keys.in_flight_member(session_id, message_id)) is None
    # A turn cancelled before its answer: neither the answer nor an entry.
    other_id = uuid.uuid4().hex
    assert turns.start_turn(session_id, other_id, ALICE, "calculate 2 + 2", None) == turns.CREATED
    cleanup.append((session_id, other_id))
    turns.cancel_turn(session_id, other_id)
    assert history.finish_with_answer(session_id, other_id, ALICE.owner, "calculate 2 + 2", "4", []) == ("cancelled", False)
    assert turns.get_turn(session_id, other_id).answer is None
    assert len(history.recall(session_id, ALICE.owner)) == 1


def test_a_tool_call_held_by_a_live_worker_waits_and_one_whose_process_is_gone_runs_again(stack, turn):
    """The journal's begin reads the holder only when a live-looking one stands in its way."""
    session_id, message_id = turn
    broker = stack.client("broker")
    journal = keys.tool_journal(session_id, message_id)
    elsewhere = "elsewhere-1-abcdef"  # another host: only its heartbeat can tell
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_here = f"{liveness.worker_id().partition('-')[0]}-{gone.stdout.strip()}-abcdef"
    broker.zadd(keys.worker_heartbeats(), {elsewhere: time.time(), dead_here: time.time()})
    try:
        broker.hset(journal, "r1c0:started", elsewhere)
        assert tool_journal.begin(session_id, message_id, "r1c0") == tool_journal.Entry("wait", holder=elsewhere)

        broker.hset(journal, "r1c0:started", dead_here)
        entry = tool_journal.begin(session_id, message_id, "r1c0")
        assert (entry.state, entry.rerun, entry.holder) == ("run", True, dead_here)
        assert broker.hget(journal, "r1c0:started") == liveness.worker_id()
        # Its outcome, once recorded, is what every later delivery gets.
        tool_journal.finish(session_id, message_id, "r1c0", {"call_id": "r1c0", "status": "ok", "result": 2})
        assert tool_journal.begin(session_id, message_id, "r1c0").outcome["result"] == 2
    finally:
        broker.zrem(keys.worker_heartbeats(), elsewhere, dead_here)
        broker.srem(keys.worker_turns(liveness.worker_id()), f"{keys.in_flight_member(session_id, message_id)}:r1c0")


def test_a_tasks_first_claim_counts_its_delivery_in_the_same_script(stack, turn):
    """shared.deliveries: a task's delivery is counted by its claim (or a tool call's journal
    entry), which also says how many deliveries of it died before."""
    session_id, message_id = turn
    broker = stack.client("broker")
    counts = keys.turn_deliveries(session_id, message_id)
    here = position(REASON, 1)
    assert turns.claim_step_counting(session_id, message_id, REASON, here, count="reason-1") == ("running", None, 0)
    assert broker.hget(counts, "reason-1") == "1"
    broker.hset(counts, "reason-1", 3)  # three deliveries died in it: the next claim says so
    assert turns.claim_step_counting(session_id, message_id, REASON, here, count="reason-1") == ("running", None, 3)
    assert turns.claim_step_counting(session_id, message_id, REASON, here) == ("running", None, None)
    assert broker.hget(counts, "reason-1") == "4"
    entry = tool_journal.begin(session_id, message_id, "r1c0", count="call_tool-r1c0")
    assert (entry.state, entry.crashes, broker.hget(counts, "call_tool-r1c0")) == ("run", 0, "1")
    broker.srem(keys.worker_turns(liveness.worker_id()), f"{keys.in_flight_member(session_id, message_id)}:r1c0")
    # No such turn: nothing to count.
    assert turns.claim_step_counting("bkgone", uuid.uuid4().hex, REASON, here, count="reason-1") == (None, None, None)


def test_a_checkpoint_keeps_the_finished_event_held_for_the_next_step_and_a_resume_shows_it_once(stack, turn):
    """run_step_holding shows a step's `finished` with the next step's `started`, after the
    checkpoint: the checkpoint keeps it, so a resume after a worker died in between shows it."""
    from shared.events import StepEvent
    from shared.turn_flow import show_held
    from workers.steps import held, phase_event

    session_id, message_id = turn
    assert turns.claim_step(session_id, message_id, REASON, position(REASON, 1)) == ("running", None)
    finished = held([phase_event(REASON, "finished", 1, 12.5)])
    checkpoint = Checkpoint(EXECUTE, 1, {"pending": []}, finished)
    assert turns.save_checkpoint(session_id, message_id, position(REASON, 1), checkpoint, claim_next=EXECUTE) == "saved"
    restored = turns.get_turn(session_id, message_id).checkpoint
    assert restored == checkpoint

    payload = {"session_id": session_id, "message_id": message_id}
    show_held(payload, restored)
    show_held(payload, restored)  # a second resume: the event is logged once
    log = stack.client("progress").xrange(keys.progress_log(session_id, message_id))
    shown = [StepEvent.model_validate_json(fields["data"]) for _, fields in log if fields["type"] == "step"]
    assert [(e.step, e.status, e.round, e.duration_ms) for e in shown] == [(REASON, "finished", 1, 12.5)]
