"""The broker's master demoted, not killed: `SENTINEL FAILOVER`, what an operator runs before
maintenance. Unlike a killed master, the old one stays up: Sentinel promotes the replica first and
turns the old master into a replica of it only when it next looks at it (up to seconds later), so
for a while there are two masters, and connections opened to the old one keep working. When it is
demoted, what it took meanwhile is discarded (it resyncs from the new master), its clients are
disconnected, and a worker blocked on `BRPOP` there is unblocked with an error.

The workers (as `turnstream worker tools` and `llm` run them: gevent and threads) and the web tier
must follow the new master by themselves while turns are posted throughout: every accepted turn
ends `done` and is answered once, a refused post is a 503 that leaves nothing, and no process
exits. Twice, so the second failover demotes a master the processes reconnected to."""

import threading
import time
import uuid
from collections.abc import Callable

import httpx
import pytest
import redis

from shared import keys
from shared.cli import processes
from tests.sse import read_stream
from tests.stack import Stack
from tests.test_sentinel import broker_behind_sentinel, post, turns_of
from tests.waiting import wait_for

PACE_S = 0.3  # between posts of the burst that spans the failover



def post_until_accepted(base_url: str, new_session: Callable[[], str], refused: list[str]) -> httpx.Response:
    """Posts a turn, each to a new session, until one is accepted (202); a refused post (503, the
    broker not a master yet) adds its session id to `refused`, and nothing else is allowed."""
    def accepted() -> httpx.Response | None:
        session_id = new_session()
        with httpx.Client(timeout=60) as client:
            response = post(client, base_url, session_id, "calculate 6 * 7")
        assert response.status_code in (202, 503), response.text
        if response.status_code == 503:
            refused.append(session_id)
        return response if response.status_code == 202 else None
    return wait_for(accepted, timeout=60, interval=0.5)

@pytest.fixture(scope="module")
def sentinel_stack(tmp_path_factory):
    system, sentinels = broker_behind_sentinel(tmp_path_factory.mktemp("sentinel-demote"))
    try:
        with system.env_applied():
            # The two kinds `turnstream worker` runs (shared.cli.processes.worker_specs).
            system.start_worker("tools", queues="discover,tools", pool="gevent", concurrency=50)
            system.start_worker("llm", queues="llm", pool="threads", concurrency=2)
            system.start_web()
            yield system, sentinels
    finally:
        system.stop()
        sentinels.stop()


def logs_about(system: Stack, session_id: str) -> list[str]:
    """What the processes logged about a session, for a failure's message."""
    return [line[:600] for name in ("tools", "llm", "web")
            for line in system.log(name).splitlines() if session_id in line]


def replication_of(port: int) -> str | None:
    try:
        return redis.Redis(port=port, socket_timeout=1, decode_responses=True).info("replication")["role"]
    except redis.RedisError:
        return None


def assert_left_nothing(system: Stack, refused: list[str], broker: redis.Redis | None = None) -> None:
    """Every refused post (a 503) left no turn: none in its session as its owner sees it and, when
    `broker` is given, no turn record and no in-flight entry the redelivery sweeper could run."""
    for sid in refused:
        assert turns_of(system.base_url, sid) in (None, []), f"refused post left a turn in {sid}"
    if broker is not None and refused:
        left = [key for sid in refused for key in broker.scan_iter(match=f"{keys.PREFIX}:turn:{sid}:*", count=1000)]
        assert not left, f"refused posts left turn records: {left}"
        in_flight = [m.decode() for m in broker.zrange(keys.turns_in_flight(), 0, -1)]
        assert not [m for m in in_flight if m.split(":")[0] in refused], in_flight


def demote(sentinels: processes.SentinelSet) -> tuple[int, int]:
    """Ask Sentinel for a failover; returns (old master, new master) once the old one serves as a replica."""
    old = sentinels.master_port()
    # A failover needs a replica in sync: after the previous one the demoted master may still be syncing.
    wait_for(lambda: redis.Redis(port=old).info("replication").get("connected_slaves", 0) >= 1, timeout=60)
    sentinel = redis.Redis(port=sentinels.sentinel_ports[0], socket_timeout=5)
    wait_for(lambda: _failover(sentinel, sentinels.master_name), timeout=60, interval=1.0)
    new = wait_for(lambda: (port := sentinels.master_port()) != old and port, timeout=60)
    wait_for(lambda: replication_of(old) == "slave" and replication_of(new) == "master", timeout=60)
    return old, new


def _failover(sentinel: redis.Redis, name: str) -> bool:
    try:
        return bool(sentinel.execute_command("SENTINEL", "FAILOVER", name))
    except redis.ResponseError:  # NOGOODSLAVE / INPROG: the replica is not ready yet
        return False


@pytest.mark.timeout(420)
@pytest.mark.parametrize("failover", [1, 2])
def test_a_demoted_master_is_followed_by_workers_and_web_without_a_restart(sentinel_stack, failover):
    system, sentinels = sentinel_stack
    run = uuid.uuid4().hex[:8]
    responses: dict[str, httpx.Response] = {}
    demoted = threading.Event()

    def burst() -> None:
        """Posts from before the failover until a few after the demotion, through the two-master window."""
        after_demotion = 0
        with httpx.Client(timeout=60) as client:
            while after_demotion < 5:
                session_id = f"demote{run}n{len(responses)}"
                responses[session_id] = post(client, system.base_url, session_id, f"calculate {len(responses)} + 1")
                after_demotion += demoted.is_set()
                time.sleep(PACE_S)

    poster = threading.Thread(target=burst)
    poster.start()
    time.sleep(2)
    old, new = demote(sentinels)
    demoted.set()
    poster.join(timeout=300)

    codes = {sid: r.status_code for sid, r in responses.items()}
    assert set(codes.values()) <= {202, 503}, {sid: r.text for sid, r in responses.items() if r.status_code not in (202, 503)}
    accepted = {sid: r.json() for sid, r in responses.items() if r.status_code == 202}
    assert accepted, codes

    def done(sid: str, message_id: str) -> bool:
        """The session holds its one turn, done; a failed one fails the test at once, saying why."""
        now = turns_of(system.base_url, sid) or []
        assert "failed" not in [turn["status"] for turn in now], (sid, now, logs_about(system, sid))
        return [(turn["message_id"], turn["status"]) for turn in now] == [(message_id, "done")]
    for sid, body in accepted.items():
        wait_for(lambda: done(sid, body["message_id"]), timeout=120, interval=0.5,
                 describe=lambda: (sid, turns_of(system.base_url, sid), codes, logs_about(system, sid)))
        events = read_stream(system.base_url, body["stream_url"])  # the whole log, replayed
        assert [e.type for e in events].count("done") == 1, [e.type for e in events]
        assert events[-1].type == "done"
    # No step of an accepted turn was dropped for a turn "gone" on a server being replaced (it
    # would have waited a visibility timeout for the sweeper to send it again).
    dropped = [line for sid in accepted for line in logs_about(system, sid) if "is gone: skipping" in line]
    assert not dropped, dropped
    refused = [sid for sid, code in codes.items() if code == 503]
    assert_left_nothing(system, refused, redis.Redis(port=sentinels.master_port()))
    # Followed, not restarted: the workers and gunicorn that started with the fixture still run.
    for worker, name in zip(system.workers, ("tools", "llm")):
        assert worker.running(), system.log(name)[-3000:]
    assert system.web.running()
    assert replication_of(old) == "slave" and replication_of(new) == "master"


@pytest.mark.timeout(300)
def test_workers_outlive_a_master_demoted_by_hand_with_replicaof(sentinel_stack):
    """An operator's `REPLICAOF` on the master: a switchover by hand, then undone. Nothing kills the
    clients here, so a worker blocked on `BRPOP` gets Redis's `UNBLOCKED ... (master -> replica?)`
    error, which Celery used to take as unrecoverable: both workers exited. They must take it as a
    lost broker connection, reconnect, and run the turns posted once the master is back."""
    system, sentinels = sentinel_stack
    master = sentinels.master_port()
    replica = next(port for port in sentinels.server_ports if port != master)
    wait_for(lambda: redis.Redis(port=master).info("replication").get("connected_slaves", 0) >= 1, timeout=60)
    lost = {name: system.log(name).count("Connection to broker lost") for name in ("tools", "llm")}

    redis.Redis(port=replica).replicaof("NO", "ONE")
    redis.Redis(port=master).replicaof("127.0.0.1", replica)
    wait_for(lambda: all(system.log(name).count("Connection to broker lost") > count for name, count in lost.items()),
             timeout=60, describe=lambda: {name: system.log(name)[-2000:] for name in lost})
    redis.Redis(port=master).replicaof("NO", "ONE")
    redis.Redis(port=replica).replicaof("127.0.0.1", master)
    wait_for(lambda: replication_of(master) == "master" and replication_of(replica) == "slave", timeout=60)

    run = uuid.uuid4().hex[:8]
    refused: list[str] = []
    response = post_until_accepted(system.base_url, lambda: f"byhand{run}n{len(refused)}", refused)
    assert read_stream(system.base_url, response.json()["stream_url"])[-1].type == "done"
    assert_left_nothing(system, refused, redis.Redis(port=sentinels.master_port()))
    for worker, name in zip(system.workers, ("tools", "llm")):
        assert worker.running(), system.log(name)[-3000:]


@pytest.mark.timeout(300)
def test_a_worker_outlives_a_single_broker_demoted_by_hand(tmp_path):
    """The same `REPLICAOF` on a broker without Sentinel: the worker gets UNBLOCKED, then READONLY on
    every reconnection while the server is a replica; it waits as for a broker that is down, and
    runs the next turn once the server is a master again (`REPLICAOF NO ONE`)."""
    system = Stack(tmp_path, TURNSTREAM_TOOL_LATENCY_MS="0")
    other = processes.redis_server("broker", processes.free_port(), tmp_path / "other").start()
    try:
        system.start_redis()
        with system.env_applied():
            system.start_worker()
            system.start_web()
            broker = redis.Redis(port=system.ports["broker"])
            broker.replicaof("127.0.0.1", other.port)
            # Past the UNBLOCKED, the worker reconnects and meets READONLY, which it takes as no broker yet.
            wait_for(lambda: "the broker is not a master: You can't write against a read only replica"
                     in system.log("worker"), timeout=60, describe=lambda: system.log("worker")[-2000:])
            assert system.workers[0].running(), system.log("worker")[-3000:]
            broker.replicaof("NO", "ONE")

            refused: list[str] = []
            response = post_until_accepted(system.base_url, lambda: f"single{uuid.uuid4().hex[:8]}", refused)
            assert read_stream(system.base_url, response.json()["stream_url"])[-1].type == "done"
            assert_left_nothing(system, refused, broker)
            assert system.workers[0].running(), system.log("worker")[-3000:]
    finally:
        system.stop()
        other.stop()
