"""What a failover can leave on the broker, checked on real redis-servers: a connection still on
the demoted master (now a replica) and a turn record whose later progress the demoted master took
with it. Either used to strand a turn: a replica answered the step's claim from stale data ("the
turn is gone"), and a record naming a live worker as the runner of a step it no longer ran made
every later delivery of that step stand aside ("run by a live worker") until the turn failed."""

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from shared import keys, turns
from shared.cli import processes
from shared.identity import Principal
from shared.settings import get_settings
from shared.turn_flow import position
from shared.vocabulary import EXECUTE
from tests.waiting import wait_for

ALICE = Principal(user="alice", tenant="acme", roles=("analyst",))


@pytest.fixture
def turn(stack) -> Iterator[tuple[str, str]]:
    session_id, message_id = f"fo{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    payload = {"session_id": session_id, "message_id": message_id, "prompt": "calculate 1 + 1",
               "user": "alice", "tenant": "acme", "roles": ["analyst"]}
    turns.claim_session(session_id, ALICE)
    assert turns.create_turn(session_id, message_id, ALICE, payload["prompt"], payload=payload)
    yield session_id, message_id
    # Ended, so the session stack's redelivery sweeper has nothing of it to send.
    turns.update_turn(session_id, message_id, stack.client("broker"), status="cancelled")


def claimed_by(broker: redis.Redis, session_id: str, message_id: str, worker: str, claimed_at: float) -> None:
    """The record as `worker`'s claim of execute at `claimed_at` leaves it (a claim by hand, not
    through claim_step, so it can be dated), with `worker` alive (it beats)."""
    broker.hset(keys.turn_record(session_id, message_id),
                mapping={"status": "running", "step": EXECUTE, "runner": worker, "runner_pos": position(EXECUTE, 1),
                         "held_until": claimed_at + get_settings().task_time_limit_s + turns.CLOCK_SKEW_S})
    broker.zadd(keys.worker_heartbeats(), {worker: time.time()})


def held_by_another_worker(broker: redis.Redis, session_id: str, message_id: str) -> int:
    """Execute claimed just now by a live worker elsewhere: this process's claim stands aside.
    Returns execute's position."""
    here = position(EXECUTE, 1)
    claimed_by(broker, session_id, message_id, "other-host-1@vm", claimed_at=time.time())
    assert turns.claim_step(session_id, message_id, EXECUTE, here) == ("held", None)
    return here


def test_a_live_runner_holds_its_step_only_for_as_long_as_a_step_may_run(stack, turn):
    session_id, message_id = turn
    broker = stack.client("broker")
    here = held_by_another_worker(broker, session_id, message_id)

    long_ago = time.time() - get_settings().task_time_limit_s - turns.CLOCK_SKEW_S - 1
    claimed_by(broker, session_id, message_id, "other-host-1@vm", claimed_at=long_ago)
    assert turns.claim_step(session_id, message_id, EXECUTE, here) == ("running", None)
    assert broker.hget(keys.turn_record(session_id, message_id), "runner") != "other-host-1@vm"


def test_a_step_handed_back_is_taken_over_at_once_by_another_process(stack, turn):
    session_id, message_id = turn
    here = held_by_another_worker(stack.client("broker"), session_id, message_id)

    turns.let_go(session_id, message_id, worker="other-host-1@vm")  # it handed its message back
    assert turns.claim_step(session_id, message_id, EXECUTE, here) == ("running", None)


def test_a_replica_refuses_a_step_claim_instead_of_answering_from_stale_data(tmp_path):
    """A replica (as a resyncing demoted master) holds none of the turns posted on the new master:
    the claim's first read would find nothing there and write nothing, so only the declared
    script makes the replica refuse it."""
    master_port, replica_port = processes.free_port(), processes.free_port()
    master = processes.redis_server("broker", master_port, tmp_path / "master",
                                    extra=["--repl-diskless-sync-delay", "0"]).start()
    try:
        replica = processes.redis_server("broker", replica_port, tmp_path / "replica",
                                         extra=["--replicaof", "127.0.0.1", str(master_port)]).start()
        try:
            on_replica = redis.Redis(port=replica_port, decode_responses=True)
            wait_for(lambda: on_replica.info("replication").get("master_link_status") == "up", timeout=30)
            with pytest.raises(redis.exceptions.ReadOnlyError):
                turns.claim_step("posted-elsewhere", uuid.uuid4().hex, EXECUTE, position(EXECUTE, 1), r=on_replica)
        finally:
            replica.kill()  # SIGTERM: a replica with an AOF takes mirakuru's whole timeout (20 s) to stop
    finally:
        master.stop()


def test_a_broker_older_than_redis_7_is_named_at_start_up():
    from shared.redis_stores import version_ok

    assert version_ok("7.0.15") and version_ok("7.2.4") and version_ok("8.0.0")
    assert not version_ok("6.2.14") and not version_ok("5.0.7")
