"""The broker's master demoted, not killed: `SENTINEL FAILOVER`, what an operator runs before
maintenance. Unlike a killed master, the old one stays up and answers as a replica: connections
opened to it still work for reads, writes get `READONLY`, and a worker blocked on `BRPOP` there is
unblocked with an `UNBLOCKED` error. The worker and the web tier must follow the new master by
themselves: turns in flight end `done`, new turns are accepted (503 meanwhile at most), and no
process exits. Twice, so the second failover demotes a master the processes reconnected to."""

import uuid

import httpx
import pytest
import redis

from shared.cli import processes
from tests.sse import bearer, read_stream
from tests.stack import Stack
from tests.test_sentinel import post, turns_of
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def sentinel_stack(tmp_path_factory):
    base_dir = tmp_path_factory.mktemp("sentinel-demote")
    sentinels = processes.SentinelSet("broker", base_dir / "broker")
    system = Stack(base_dir, TURNSTREAM_TOOL_LATENCY_MS="200", TURNSTREAM_VISIBILITY_TIMEOUT_S="12",
                   TURNSTREAM_UNACKED_RESTORE_INTERVAL_S="1", TURNSTREAM_BREAKER_RESET_S="1",
                   TURNSTREAM_REDELIVERY_SWEEP_S="1", TURNSTREAM_TURN_RATE_LIMIT="1000/minute")
    try:
        sentinels.start()
        system.start_redis(roles=("progress", "exec_cache", "auth_memo"))
        system.env["BROKER_REDIS_URL"] = sentinels.url
        with system.env_applied():
            system.start_worker()
            system.start_web()
            yield system, sentinels
    finally:
        system.stop()
        sentinels.stop()


def role_of(port: int) -> str | None:
    try:
        return redis.Redis(port=port, socket_timeout=1, decode_responses=True).info("replication")["role"]
    except redis.RedisError:
        return None


def demote(sentinels: processes.SentinelSet) -> tuple[int, int]:
    """Ask Sentinel for a failover; returns (old master, new master) once the old one serves as a replica."""
    old = sentinels.master_port()
    # A failover needs a replica in sync: after the previous one the demoted master may still be syncing.
    wait_for(lambda: all(role_of(port) for port in sentinels.server_ports) and
             redis.Redis(port=old).info("replication").get("connected_slaves", 0) >= 1, timeout=60)
    sentinel = redis.Redis(port=sentinels.sentinel_ports[0], socket_timeout=5)
    wait_for(lambda: _failover(sentinel, sentinels.master_name), timeout=60, interval=1.0)
    new = wait_for(lambda: (port := sentinels.master_port()) != old and port, timeout=60)
    wait_for(lambda: role_of(old) == "slave" and role_of(new) == "master", timeout=60)
    return old, new


def _failover(sentinel: redis.Redis, name: str) -> bool:
    try:
        return bool(sentinel.execute_command("SENTINEL", "FAILOVER", name))
    except redis.ResponseError:  # NOGOODSLAVE / INPROG: the replica is not ready yet
        return False


def post_until_accepted(base_url: str, session_id: str, prompt: str) -> httpx.Response:
    """Posts until the web tier takes the turn; only 503 (the failover settling) may come before."""
    codes = []

    def attempt() -> httpx.Response | None:
        with httpx.Client(timeout=60) as client:
            response = post(client, base_url, session_id, prompt)
        codes.append(response.status_code)
        assert response.status_code in (202, 503), response.text
        return response if response.status_code == 202 else None
    return wait_for(attempt, timeout=90, interval=0.5, describe=lambda: codes)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("failover", [1, 2])
def test_a_demoted_master_is_followed_by_workers_and_web_without_a_restart(sentinel_stack, failover):
    system, sentinels = sentinel_stack
    run = uuid.uuid4().hex[:8]
    before = [post_until_accepted(system.base_url, f"demote{run}b{i}", f"calculate {i} + {failover}")
              for i in range(3)]

    old, new = demote(sentinels)

    after = [post_until_accepted(system.base_url, f"demote{run}a{i}", f"calculate {i} * {failover}")
             for i in range(3)]
    for response in [*before, *after]:
        events = read_stream(system.base_url, response.json()["stream_url"])
        assert events[-1].type == "done", events[-1]
    for response in [*before, *after]:
        body = response.json()
        records = turns_of(system.base_url, body["session_id"])
        assert [(r["message_id"], r["status"]) for r in records] == [(body["message_id"], "done")]
    # Followed, not restarted: the worker and gunicorn that started with the fixture still run.
    assert system.workers[0].running(), system.log("worker")[-3000:]
    assert system.web.running()
    assert role_of(old) == "slave" and role_of(new) == "master"
