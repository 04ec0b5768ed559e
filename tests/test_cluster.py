"""Every store distributed, on real servers started here on free ports: the broker behind Sentinel
(master, replica, 3 sentinels), progress on a 3-master/3-replica Redis Cluster (redis-server
--cluster-enabled yes, joined with `redis-cli --cluster create`), the exec cache and the auth memo
on 3-master Clusters of their own (each store keeps its eviction policy); a real worker and
gunicorn+gevent. The topology is started once for the module.

The failover scenario opens 200 streams, kills one progress master with SIGKILL, and publishes
the rest of every turn after a replica took over: each stream must end with every event of its
turn's log exactly once."""

import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from httpx_sse import connect_sse
from redis.cluster import key_slot

from shared import keys
from shared.cli import processes
from shared.events import DoneEvent, StepEvent, DeltaEvent
from shared.identity import Principal, issue_stream_token
from tests.sse import post_prompt, read_stream, tool_calls
from tests.stack import STORE_ENV, Stack
from tests.test_chaos import restore_env, wait_for

STREAMS = 200
BEFORE, AFTER = 3, 3  # events per turn published before the kill and after the failover


@pytest.fixture(scope="module")
def cluster_stack(tmp_path_factory):
    saved_env = dict(os.environ)
    base_dir = tmp_path_factory.mktemp("cluster")
    topologies = {"broker": processes.SentinelSet("broker", base_dir / "broker"),
                  "progress": processes.RedisCluster("progress", base_dir / "progress"),
                  "exec_cache": processes.RedisCluster("exec_cache", base_dir / "exec_cache", replicas=0),
                  "auth_memo": processes.RedisCluster("auth_memo", base_dir / "auth_memo", replicas=0)}
    system = Stack(base_dir, TURNSTREAM_BREAKER_RESET_S="0.5", TURNSTREAM_TURN_RATE_LIMIT="1000/minute")
    try:
        for store, topology in topologies.items():
            topology.start()
            system.env[STORE_ENV[store]] = topology.url
        system.apply_env()
        system.start_worker()
        system.start_web()
        yield system, topologies["progress"]
    finally:
        system.stop()
        for topology in topologies.values():
            topology.stop()
        restore_env(saved_env)


def node(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=2, decode_responses=True)


def slot(key: str) -> int:
    return key_slot(key.encode())


def test_turns_run_end_to_end_with_every_store_on_sentinel_or_cluster(cluster_stack):
    system, progress = cluster_stack
    prompts = [f"What is the weather in {city}?" for city in ("Paris", "London", "Tokyo", "Berlin", "Rome", "Madrid")]
    bodies = [post_prompt(system.base_url, f"cl{i}", prompt).json() for i, prompt in enumerate(prompts)]
    for body in bodies:
        events = read_stream(system.base_url, body["stream_url"])
        assert events[-1].type == "done", events[-1]
        assert ("discover", "started") in [(e.data.get("step"), e.data.get("status")) for e in events]
        assert events[-1].data["answer"].startswith("In ")
    # A turn's log lives in its slot on the shard that owns it, and the turns spread over the shards.
    slots = {port: progress.slots_of(port) for port in progress.masters()}
    owners = set()
    for b in bodies:
        log_key = keys.progress_log(b["session_id"], b["message_id"])
        owner = next(port for port, owned in slots.items() if slot(log_key) in owned)
        assert node(owner).exists(log_key)
        owners.add(owner)
    assert len(owners) > 1


def test_tool_guards_memoize_and_cache_on_their_clusters(cluster_stack):
    system, _ = cluster_stack
    prompt = "What is the weather in Lisbon?"
    first, again = (read_stream(system.base_url, post_prompt(system.base_url, f"guard{i}", prompt).json()["stream_url"])
                    for i in range(2))
    tool_first = [e.data for e in tool_calls(first)]
    tool_again = [e.data for e in tool_calls(again)]
    assert tool_first[0]["cache"] == "miss" and tool_first[0]["permission"]["allowed"] is True
    # The second turn reads the memo (one MGET per slot) and the cached result (a script on one slot).
    assert tool_again[0]["permission"] == {"allowed": True, "memo": "hit"}
    assert tool_again[0]["cache"] == "hit"
    assert again[-1].data["answer"] == first[-1].data["answer"]


class Follower:
    """One SSE client that reconnects with Last-Event-ID until its turn's `done`, as a browser does."""

    def __init__(self, base_url: str, session_id: str, message_id: str):
        token = issue_stream_token(Principal("alice", "acme", ("analyst",)), session_id, message_id)
        self.url = f"{base_url}/stream/{session_id}/{message_id}?token={token}"
        self.ids: list[str] = []
        self.reconnects = 0
        self.done = False

    def run(self, deadline: float) -> "Follower":
        with httpx.Client(timeout=httpx.Timeout(10, read=40)) as client:
            while not self.done and time.monotonic() < deadline:
                self._once(client)
                if not self.done:
                    self.reconnects += 1
                    time.sleep(0.3)
        return self

    def _once(self, client: httpx.Client) -> None:
        headers = {"Last-Event-ID": self.ids[-1]} if self.ids else {}
        try:
            with connect_sse(client, "GET", self.url, headers=headers) as source:
                if source.response.status_code != 200:
                    return
                for sse in source.iter_sse():
                    if not sse.data:
                        continue
                    self.ids.append(sse.id)
                    if sse.event == "done":
                        self.done = True
                        return
        except httpx.HTTPError:
            return


def publish_all(publishers, events) -> None:
    """Publish `events` to every turn, retrying through a failover (the breaker fails fast meanwhile)."""
    for publisher in publishers:
        for event, dedupe in events:
            wait_for(lambda: _try_publish(publisher, event, dedupe), timeout=60, interval=0.2)


def _try_publish(publisher, event, dedupe) -> bool:
    try:
        publisher.publish(event, dedupe=dedupe)
        return True
    except redis.RedisError:
        return False


def replicas_caught_up(progress: processes.RedisCluster) -> bool:
    for port in progress.masters():
        info = node(port).info("replication")
        offsets = [int(info[key]["offset"]) for key in info if key.startswith("slave") and isinstance(info[key], dict)]
        if not offsets or min(offsets) < int(info["master_repl_offset"]):
            return False
    return True


def sharded_subscriber_connections(port: int) -> int:
    return sum(1 for c in node(port).client_list() if int(c.get("ssub", 0)) > 0)


@pytest.mark.timeout(400)
def test_killing_a_progress_master_with_200_open_streams_loses_and_repeats_no_event(cluster_stack):
    from shared.progress import Publisher, read_log

    system, progress = cluster_stack
    run = uuid.uuid4().hex[:6]
    turns = [(f"fo{run}{i}", uuid.uuid4().hex) for i in range(STREAMS)]
    publishers = [Publisher(sid, mid) for sid, mid in turns]
    followers = [Follower(system.base_url, sid, mid) for sid, mid in turns]
    deadline = time.monotonic() + 300
    pool = ThreadPoolExecutor(STREAMS)
    running = [pool.submit(f.run, deadline) for f in followers]

    before = [(StepEvent(step="reason", status="started", round=1), "before-0"),
              *[(DeltaEvent(text=f"b{i} "), f"before-{i}") for i in range(1, BEFORE)]]
    publish_all(publishers, before)
    wait_for(lambda: all(len(f.ids) >= BEFORE for f in followers), timeout=120,
             describe=lambda: sorted(len(f.ids) for f in followers)[:10])
    masters = progress.masters()
    # One sharded subscription connection per master for the whole web process, not one per stream.
    assert [sharded_subscriber_connections(port) for port in masters] == [1, 1, 1]
    wait_for(lambda: replicas_caught_up(progress), timeout=30)

    victim = masters[0]
    victim_slots = progress.slots_of(victim)
    on_victim = {i for i, (sid, mid) in enumerate(turns) if slot(keys.progress_log(sid, mid)) in victim_slots}
    progress.nodes[victim].stop(stop_signal=signal.SIGKILL)
    wait_for(lambda: victim not in progress.masters() and len(progress.masters()) == 3, timeout=60)
    progress.wait_ready(timeout=60)

    after = [*[(DeltaEvent(text=f"a{i} "), f"after-{i}") for i in range(AFTER)], (DoneEvent(answer="ok"), "terminal")]
    publish_all(publishers, after)
    wait_for(lambda: all(f.done for f in followers), timeout=120,
             describe=lambda: [(i, len(f.ids), f.reconnects, i in on_victim) for i, f in enumerate(followers)
                               if not f.done][:10])
    results = [r.result(timeout=60) for r in running]
    pool.shutdown()

    total = BEFORE + AFTER + 1
    for (sid, mid), follower in zip(turns, results):
        logged = [e.id for e in read_log(sid, mid)]
        assert len(logged) == total, (sid, mid, len(logged))
        assert follower.ids == logged, (sid, follower.ids, logged)  # none lost, none repeated, in order
    # The streams on the killed master were cut and resumed; the others were left alone.
    assert on_victim and all(results[i].reconnects >= 1 for i in on_victim)
    assert sum(1 for i, f in enumerate(results) if i not in on_victim and f.reconnects) == 0


@pytest.mark.timeout(240)
def test_a_resharded_turn_keeps_streaming_with_no_event_lost_or_repeated(cluster_stack):
    from shared.progress import Publisher, read_log

    system, progress = cluster_stack
    sid, mid = f"reshard{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    publisher = Publisher(sid, mid)
    follower = Follower(system.base_url, sid, mid)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(follower.run, time.monotonic() + 120)
        publish_all([publisher], [(StepEvent(step="reason", status="started", round=1), "r1")])
        wait_for(lambda: len(follower.ids) == 1, timeout=30)
        turn_slot = slot(keys.progress_log(sid, mid))
        source = next(port for port in progress.masters() if turn_slot in progress.slots_of(port))
        target = next(port for port in progress.masters() if port != source)
        progress.move_slot(turn_slot, target)  # the log moves; the server ends the slot's shard subscriptions
        publish_all([publisher], [(DeltaEvent(text="moved "), "d1"), (DoneEvent(answer="ok"), "terminal")])
        result = running.result(timeout=120)
    assert result.done and result.reconnects >= 1  # cut once by the move, resumed on the new owner
    assert result.ids == [e.id for e in read_log(sid, mid)] and len(result.ids) == 3
