"""Scaling the progress store out: one redis-server against a 3-master Redis Cluster, in the same run.

1. Publish capacity: N publisher processes run the workers' append+publish script (EVALSHA of the
   text in shared/progress.py: XADD + PUBLISH on one server, XADD + SPUBLISH on the Cluster) on
   turns keyed as shared/keys.py keys them, pipelined, each process connected straight to the
   master that owns its turns; events/s through 1 shard vs 3, the two alternated `--repeats`
   times (medians compared), with the CPU the servers and the publishers used meanwhile, so a
   reader can see which of them was the limit.
2. Fan-out: W gunicorn gevent web processes hold S streams each, spread over T turns; every round
   publishes one event to each turn and is timed until the last client has its turn's event.
3. Redis connections each web process holds, by store, while those streams are open (psutil: the
   process's TCP connections to each store's ports; pub/sub included).

A redis-server executes commands on one thread, so one server uses at most one core however many
the machine has; three masters can use three. Nothing is pinned: on this 2-core machine the three
masters, the publishers and the benchmark share both cores, so the Cluster's ceiling here is two
cores minus what the publishers use, not three servers' worth.

    python bench/scale_out.py [--publishers 6] [--seconds 5] [--batch 100] [--repeats 3]
                              [--web 4] [--streams 2500] [--turns 100] [--rounds 20]
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import SseClient, delivery_latencies, percentile  # noqa: E402  (puts the repo on sys.path)

import redis
from redis.crc import key_slot

from shared import keys, redis_urls
from shared.cli import processes
from shared.events import DeltaEvent
from shared.identity import Principal, issue_stream_token
from shared.progress import _APPEND_AND_PUBLISH as APPEND_AND_PUBLISH, ENTRY_ID_PATTERN, Publisher, render
from shared.redis_stores import make_redis
from shared.settings import Settings
from tests.stack import STORE_ENV, Stack

OTHER_STORES = ("broker", "exec_cache", "auth_memo")


# --- 1. publish capacity ---------------------------------------------------------------------------
# What is measured is the servers, so the publishers must cost the machine as little as possible: each
# process runs the workers' own script (EVALSHA of the exact text in shared/progress.py, the event
# rendered by shared.progress.render) on turns whose keys shared/keys.py builds, all owned by one
# master, over a plain single-server connection to that master (the slot map is read once, as a
# Cluster client does), and sends `batch` calls as one pipeline packed once in advance. Rejected:
# redis-py's RedisCluster client, which the first runs used: its per-command slot lookup and its
# node-splitting pipeline cost the 2 cores more than the servers did, so they measured the client.
@dataclass(frozen=True)
class Shard:
    """One master and the hash slots it serves (every slot, on one server)."""

    host: str
    port: int
    slots: frozenset[int]


def shards_of(url: str) -> list[Shard]:
    """The masters behind a progress URL: the server itself, or each master of a Cluster (CLUSTER SLOTS, once)."""
    target = redis_urls.parse(url)
    host, port = target.hosts[0]
    if not target.cluster:
        return [Shard(host, port, frozenset(range(16384)))]
    slots: dict[tuple[str, int], set[int]] = {}
    for start, end, primary, *_ in redis.Redis(host, port, decode_responses=True).execute_command("CLUSTER", "SLOTS"):
        slots.setdefault((primary[0], int(primary[1])), set()).update(range(int(start), int(end) + 1))
    return [Shard(h, p, frozenset(owned)) for (h, p), owned in sorted(slots.items(), key=lambda item: item[0][1])]


def turns_on(shard: Shard, publisher: int, count: int) -> list[tuple[str, str]]:
    """`count` turns whose progress keys (log, marker, channel: one hash tag) the shard owns."""
    found, i = [], 0
    while len(found) < count:
        sid, mid = f"bench{publisher}", f"t{i}"
        if key_slot(keys.progress_log(sid, mid).encode()) in shard.slots:
            found.append((sid, mid))
        i += 1
    return found


def _script_calls(shard: Shard, sha: str, sharded: bool, publisher: int, turns: int, batch: int) -> list[tuple]:
    """`batch` EVALSHA calls of the append+publish script, one token event each, spread over the turns.
    Dedupe off ("0"): a marker would make every repeat of a packed call publish nothing."""
    settings = Settings()
    event = render(DeltaEvent(text="x" * 40))
    command = "SPUBLISH" if sharded else "PUBLISH"
    calls = [("EVALSHA", sha, 2, keys.progress_log(sid, mid), keys.progress_marker(sid, mid, "none"),
              event.wire, event.kind, event.data, settings.progress_log_maxlen, settings.progress_ttl_s * 1000,
              keys.progress_channel(sid, mid), "0", command)
             for sid, mid in turns_on(shard, publisher, turns)]
    return [calls[i % len(calls)] for i in range(batch)]


def _publish_on(shard: Shard, sharded: bool, index: int, turns: int, seconds: float, batch: int,
                ready, go, out) -> None:
    r = redis.Redis(shard.host, shard.port)
    sha = r.script_load(APPEND_AND_PUBLISH)
    calls = _script_calls(shard, sha, sharded, index, turns, batch)
    first = r.pipeline(transaction=False)
    for call in calls:
        first.execute_command(*call)
    if not all(ENTRY_ID_PATTERN.fullmatch(entry_id.decode()) for entry_id in first.execute()):
        raise RuntimeError("the append+publish script did not return entry ids")
    connection = r.connection_pool.get_connection()
    packed = connection.pack_commands(calls)
    ready.put(index)
    go.wait()
    count, cpu, end = 0, time.process_time(), time.monotonic() + seconds
    while time.monotonic() < end:
        connection.send_packed_command(packed, check_health=False)
        for _ in calls:
            connection.read_response()  # raises on an error reply (MOVED included)
        count += batch
    out.put((count, time.process_time() - cpu))


@dataclass(frozen=True)
class PublishRun:
    events_per_s: float
    server_cores: float  # CPU the progress servers used, in cores (1.0 = one core busy all the time)
    publisher_cores: float


def publish_capacity(url: str, server_pids: list[int], publishers: int, seconds: float, batch: int,
                     turns: int = 60) -> PublishRun:
    """Events/s through the masters behind `url`, publisher i sending to master i mod masters."""
    import psutil

    masters = shards_of(url)
    sharded = len(masters) > 1 or redis_urls.parse(url).cluster
    ctx = multiprocessing.get_context("spawn")
    out, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_publish_on,
                         args=(masters[i % len(masters)], sharded, i, turns, seconds, batch, ready, go, out))
             for i in range(publishers)]
    for p in procs:
        p.start()
    for _ in procs:  # every process imported, connected and loaded the script before the clock starts
        ready.get(timeout=120)
    servers = [psutil.Process(pid) for pid in server_pids]
    cpu_before, started = sum(sum(s.cpu_times()[:2]) for s in servers), time.monotonic()
    go.set()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    wall = time.monotonic() - started
    cpu_after = sum(sum(s.cpu_times()[:2]) for s in servers)
    for p in procs:
        p.join()
    return PublishRun(sum(n for n, _ in results) / seconds, (cpu_after - cpu_before) / wall,
                      sum(c for _, c in results) / wall)


def redis_benchmark_rate(url: str, server_pids: list[int], seconds_hint: float, expected_rate: float,
                         clients: int, batch: int) -> PublishRun | None:
    """The same script from redis-benchmark (C, one thread): a check that the Python publishers were not
    the limit. Its `{tag}` becomes a hash tag of the node it sends to (Cluster mode), so a call's log,
    marker and channel share a slot as a turn's do; `__rand_int__` spreads the calls over 1,000 logs."""
    import psutil

    if shutil.which("redis-benchmark") is None:
        print("redis-benchmark is not installed (apt-get install redis-tools): no C cross-check", flush=True)
        return None
    target = redis_urls.parse(url)
    host, port = target.hosts[0]
    sha = redis.Redis(host, port).script_load(APPEND_AND_PUBLISH)
    if target.cluster:
        for shard in shards_of(url):
            redis.Redis(shard.host, shard.port).script_load(APPEND_AND_PUBLISH)
    settings = Settings()
    event = render(DeltaEvent(text="x" * 40))
    turn = "{tag}:__rand_int__"  # {tag}: the slot; the rest: which of the 1,000 turns
    command = ["EVALSHA", sha, "2", f"agent:progress-log:{turn}", f"agent:progress-once:{turn}:none",
               event.wire, event.kind, event.data, str(settings.progress_log_maxlen), str(settings.progress_ttl_s * 1000),
               f"agent:progress:{turn}", "0", "SPUBLISH" if target.cluster else "PUBLISH"]
    requests = max(10_000, int(expected_rate * seconds_hint))
    servers = [psutil.Process(pid) for pid in server_pids]
    cpu_before, started = sum(sum(s.cpu_times()[:2]) for s in servers), time.monotonic()
    result = subprocess.run(["redis-benchmark", "-h", host, "-p", str(port), "-c", str(clients), "-P", str(batch),
                             "-n", str(requests), "-r", "1000", "-q", *(["--cluster"] if target.cluster else []),
                             *command], capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - started
    cpu_after = sum(sum(s.cpu_times()[:2]) for s in servers)
    rates = re.findall(r"([0-9.]+) requests per second", result.stdout)
    if result.returncode != 0 or not rates or "error" in result.stdout.lower():
        raise RuntimeError(f"redis-benchmark failed: {result.stdout[-500:]} {result.stderr[-500:]}")
    return PublishRun(float(rates[-1]), (cpu_after - cpu_before) / wall, 0.0)


# --- 2. fan-out ----------------------------------------------------------------------------------
async def fan_out(port: int, url: str, streams: int, turns: int, rounds: int, web_pids, store_ports) -> dict:
    r = make_redis(url, Settings(), 8)
    ids = [("fan", f"turn{i}") for i in range(turns)]
    publishers = [Publisher(sid, mid, r=r) for sid, mid in ids]
    paths = [f"/stream/{sid}/{mid}?token={issue_stream_token(Principal('bench', 'bench', ()), sid, mid)}"
             for sid, mid in ids]
    clients = [SseClient(i % turns) for i in range(streams)]
    for start in range(0, streams, 200):
        for client in clients[start:start + 200]:
            asyncio.ensure_future(client.run(port, paths[client.turn]))
        await asyncio.sleep(0.1)
    deadline = time.monotonic() + 120
    while not all(c.opened for c in clients):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sum(c.opened for c in clients)}/{streams} streams opened")
        await asyncio.sleep(0.2)
    await asyncio.sleep(2.0)  # subscriptions confirmed and log replays done
    held = connections_by_store(web_pids, store_ports)

    def publish(seq: int) -> None:
        for publisher in publishers:
            publisher.publish(DeltaEvent(text=json.dumps({"seq": seq})))

    latencies = await delivery_latencies(clients, rounds, publish, within_s=15, pause_s=0.2)
    return {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "held": held}


def connections_by_store(pids: list[int], store_ports: dict[str, set[int]]) -> list[dict[str, int]]:
    """For each web process: its established TCP connections to each store's servers."""
    import psutil

    held = []
    for pid in pids:
        conns = psutil.Process(pid).net_connections(kind="tcp")
        held.append({store: sum(1 for c in conns if c.raddr and c.raddr.port in ports and c.status == "ESTABLISHED")
                     for store, ports in store_ports.items()})
    return held


def web_worker_pids(stack: Stack) -> list[int]:
    import psutil

    return [child.pid for child in psutil.Process(stack.web.process.pid).children()]


# --- the two topologies ----------------------------------------------------------------------------
def publish_phase(base: Path, args) -> dict[str, list[PublishRun]]:
    """Both topologies up at once (an idle one costs nothing), measured in turns: single, cluster, single, ..."""
    port = processes.free_port()
    single = processes.redis_server("progress", port, base / "publish-single").start()
    cluster = processes.RedisCluster("progress", base / "publish-cluster", replicas=0).start()
    topologies = {"single": (f"redis://127.0.0.1:{port}/0", [single.process.pid]),
                  "cluster": (cluster.url, [node.process.pid for node in cluster.nodes.values()])}
    runs: dict[str, list[PublishRun]] = {name: [] for name in topologies}
    runs.update({f"{name} (redis-benchmark)": [] for name in topologies})
    try:
        for trial in range(args.repeats):
            for name, (url, pids) in topologies.items():
                run = publish_capacity(url, pids, args.publishers, args.seconds, args.batch)
                runs[name].append(run)
                print(f"{name:<8} publish #{trial + 1}: {run.events_per_s:,.0f} events/s "
                      f"({args.publishers} publishers, {args.batch} calls per pipeline); CPU: servers "
                      f"{run.server_cores:.2f} cores, publishers {run.publisher_cores:.2f} cores", flush=True)
                if args.c_load:
                    c_run = redis_benchmark_rate(url, pids, args.seconds, run.events_per_s, 6, args.batch)
                    if c_run:
                        runs[f"{name} (redis-benchmark)"].append(c_run)
                        print(f"{name:<8} redis-benchmark #{trial + 1}: {c_run.events_per_s:,.0f} events/s "
                              f"(6 connections, {args.batch} per pipeline); CPU: servers {c_run.server_cores:.2f} cores",
                              flush=True)
    finally:
        single.stop()
        cluster.stop()
    return runs


def fan_out_phase(name: str, base: Path, args) -> dict:
    stack = Stack(base / name, TURNSTREAM_SSE_HEARTBEAT_S="60", TURNSTREAM_WORKER_CONNECTIONS="12000")
    cluster = None
    try:
        stack.start_redis(stores=OTHER_STORES)
        store_ports = {store: {stack.ports[store]} for store in OTHER_STORES}
        if name == "cluster":
            cluster = processes.RedisCluster("progress", base / name / "progress", replicas=0).start()
            stack.env[STORE_ENV["progress"]] = cluster.url
            store_ports["progress"] = set(cluster.ports)
        else:
            stack.start_redis(stores=("progress",))
            store_ports["progress"] = {stack.ports["progress"]}
        url = stack.env[STORE_ENV["progress"]]
        stack.apply_env()
        stack.start_web(workers=args.web)
        time.sleep(2)
        result = asyncio.run(fan_out(stack.web_port, url, args.web * args.streams, args.turns, args.rounds,
                                     web_worker_pids(stack), store_ports))
        print(f"{name:<8} fan-out: {args.web} web x {args.streams} streams over {args.turns} turns: "
              f"p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms", flush=True)
        for i, held in enumerate(result["held"]):
            print(f"{name:<8} web process {i}: " + ", ".join(f"{store} {n}" for store, n in held.items()), flush=True)
        return result
    finally:
        stack.stop()
        if cluster:
            cluster.stop()


def load() -> str:
    return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishers", type=int, default=6, help="publisher processes (a multiple of 3 spreads evenly)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=100, help="script calls per pipeline")
    parser.add_argument("--repeats", type=int, default=3, help="publish runs per topology, alternated")
    parser.add_argument("--web", type=int, default=4)
    parser.add_argument("--streams", type=int, default=2500, help="per web process")
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--no-fan-out", action="store_true", help="publish capacity only")
    parser.add_argument("--no-c-load", dest="c_load", action="store_false",
                        help="skip the cross-check with redis-benchmark")
    args = parser.parse_args()
    print(f"start: {load()}, {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        runs = publish_phase(Path(tmp), args)
        fanned = {} if args.no_fan_out else {name: fan_out_phase(name, Path(tmp), args)
                                              for name in ("single", "cluster")}
    print(f"end: {load()}")
    rate = {name: statistics.median(run.events_per_s for run in done) for name, done in runs.items() if done}
    cores = {name: statistics.median(run.server_cores for run in done) for name, done in runs.items() if done}
    print()
    for load_kind in ("", " (redis-benchmark)"):
        if f"single{load_kind}" in rate:
            one, three = rate[f"single{load_kind}"], rate[f"cluster{load_kind}"]
            print(f"3 shards / 1 server{load_kind or ' (Python publishers)'}: publish {three:,.0f} / {one:,.0f} events/s = "
                  f"{three / one:.2f}x (medians of {args.repeats}); server CPU {cores[f'cluster{load_kind}']:.2f} / "
                  f"{cores[f'single{load_kind}']:.2f} cores; events per server core-second "
                  f"{three / cores[f'cluster{load_kind}']:,.0f} / {one / cores[f'single{load_kind}']:,.0f}")
    if fanned:
        print(f"3 shards / 1 server: fan-out p99 {fanned['cluster']['p99']:.1f} / {fanned['single']['p99']:.1f} ms = "
              f"{fanned['cluster']['p99'] / fanned['single']['p99']:.2f}x")


if __name__ == "__main__":
    main()
