"""The broker behind Redis Sentinel: a real master, replica and three sentinels started here on free
ports, the rest of the system (a worker, gunicorn+gevent) pointed at them with a sentinel:// URL.

The failover scenario kills the master with SIGKILL in the middle of a burst of turns: every
turn the web tier accepted (202) must end `done`, every refused post must be a 503, and a
refused post must leave no turn behind."""

import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from shared.cli import processes
from tests.sse import bearer, read_stream
from tests.stack import Stack
from tests.test_chaos import restore_env, wait_for

BURST = 50
KILL_AFTER = 15  # posts answered before the master dies
PACE_S = 0.8  # per posting thread, between posts


def broker_behind_sentinel(base_dir: Path) -> tuple[Stack, processes.SentinelSet]:
    """A stack whose broker is a Sentinel set (not started yet) and whose other stores are single
    servers (started), with the settings the failover tests need: a short visibility timeout, so
    a message the dead master took with it comes back within seconds, and short limits and sweeps."""
    sentinels = processes.SentinelSet("broker", base_dir / "broker")
    system = Stack(base_dir, TURNSTREAM_TOOL_LATENCY_MS="200", TURNSTREAM_VISIBILITY_TIMEOUT_S="12",
                   TURNSTREAM_TASK_SOFT_TIME_LIMIT_S="6", TURNSTREAM_TASK_TIME_LIMIT_S="8",
                   TURNSTREAM_UNACKED_RESTORE_INTERVAL_S="1", TURNSTREAM_BREAKER_RESET_S="1",
                   TURNSTREAM_REDELIVERY_SWEEP_S="1", TURNSTREAM_TURN_RATE_LIMIT="1000/minute")
    try:
        sentinels.start()
        system.start_redis(stores=("progress", "exec_cache", "auth_memo"))
    except BaseException:
        system.stop()
        sentinels.stop()
        raise
    system.env["BROKER_REDIS_URL"] = sentinels.url
    return system, sentinels


@pytest.fixture(scope="module")
def sentinel_stack(tmp_path_factory):
    saved_env = dict(os.environ)
    system, sentinels = broker_behind_sentinel(tmp_path_factory.mktemp("sentinel"))
    try:
        system.apply_env()
        system.start_worker()
        system.start_web()
        yield system, sentinels
    finally:
        system.stop()
        sentinels.stop()
        restore_env(saved_env)


def post(client: httpx.Client, base_url: str, session_id: str, prompt: str) -> httpx.Response:
    return client.post(f"{base_url}/api/sessions/{session_id}/messages", json={"prompt": prompt}, headers=bearer())


def turns_of(base_url: str, session_id: str) -> list[dict] | None:
    """The session's turns as its owner sees them; None if the session does not exist. Asks again
    while the broker answers 503 (a failover still settling)."""
    def ask() -> httpx.Response | None:
        response = httpx.get(f"{base_url}/api/sessions/{session_id}/messages", headers=bearer(), timeout=30)
        return None if response.status_code == 503 else response
    response = wait_for(ask, timeout=60, interval=0.5)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.json()["messages"]


def test_a_turn_runs_end_to_end_with_the_broker_behind_sentinel(sentinel_stack):
    system, _ = sentinel_stack
    with httpx.Client(timeout=30) as client:
        response = post(client, system.base_url, "sentinel1", "What is the weather in Paris?")
    assert response.status_code == 202, response.text
    events = read_stream(system.base_url, response.json()["stream_url"])
    assert events[-1].type == "done"
    assert events[-1].data["answer"].startswith("In Paris it is")


@pytest.mark.timeout(300)  # the failover, then a redelivery sweep for any message the dead master took
def test_killing_the_master_mid_burst_loses_no_accepted_turn_and_leaves_nothing_of_a_refused_one(sentinel_stack):
    system, sentinels = sentinel_stack
    old_master = sentinels.master_port()
    sessions = [f"burst{uuid.uuid4().hex[:8]}{i}" for i in range(BURST)]
    answered = []

    killed = threading.Event()
    after_kill: set[int] = set()

    def one(i: int) -> httpx.Response:
        started_after_kill = killed.is_set()
        with httpx.Client(timeout=60) as client:
            response = post(client, system.base_url, sessions[i], f"calculate {i} + 1")
        if started_after_kill:
            after_kill.add(i)
        answered.append(i)
        if len(answered) == KILL_AFTER:
            sentinels.server(old_master).stop(stop_signal=signal.SIGKILL)
            killed.set()
        time.sleep(PACE_S)  # the burst outlasts the failover, so posts meet the old master, none, and the new one
        return response

    with ThreadPoolExecutor(5) as pool:
        responses = list(pool.map(one, range(BURST)))

    codes = [r.status_code for r in responses]
    assert set(codes) <= {202, 503}, [r.text for r in responses if r.status_code not in (202, 503)]
    accepted = [(sid, r.json()) for sid, r in zip(sessions, responses) if r.status_code == 202]
    refused = [(sid, r) for sid, r in zip(sessions, responses) if r.status_code == 503]
    # Turns were accepted after the kill, by the new master, without restarting anything.
    assert any(responses[i].status_code == 202 for i in after_kill), [responses[i].status_code for i in sorted(after_kill)]
    for _, response in refused:
        assert response.json()["error"] == "unavailable"
        assert "Retry-After" in response.headers

    wait_for(lambda: sentinels.master_port() != old_master, timeout=60)

    def all_done() -> bool:
        return all((turns_of(system.base_url, sid) or [{}])[0].get("status") == "done" for sid, _ in accepted)
    wait_for(all_done, timeout=240, interval=1.0,
             describe=lambda: [(sid, turns_of(system.base_url, sid)) for sid, _ in accepted
                               if (turns_of(system.base_url, sid) or [{}])[0].get("status") != "done"][:5])
    for sid, body in accepted:
        records = turns_of(system.base_url, sid)
        assert [r["message_id"] for r in records] == [body["message_id"]]  # answered once, recorded once
    for sid, _ in refused:
        assert turns_of(system.base_url, sid) in (None, []), f"refused post left a turn in {sid}"
