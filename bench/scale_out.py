"""Scaling the progress store out: one redis-server against a 3-master Redis Cluster, in the same run.

1. Publish throughput: N publisher processes append+publish progress events (the workers' Lua
   script: XADD + PUBLISH on one server, XADD + SPUBLISH on the Cluster) to their own turns for a
   few seconds; events/s through 1 shard vs 3. Twice: one call per event, as a worker publishes,
   and pipelined (`--batch` calls of the same script per round trip), which loads the servers
   rather than the Python publishers.
2. Fan-out: W gunicorn gevent web processes hold S streams each, spread over T turns; every round
   publishes one event to each turn and is timed until the last client has its turn's event.
3. Redis connections each web process holds, by store, while those streams are open (psutil: the
   process's TCP connections to each store's ports; pub/sub included).

Clients, publishers and every server share the machine's cores, so the figures are bounded by it.

    python bench/scale_out.py [--publishers 4] [--seconds 5] [--web 4] [--streams 500] [--turns 100]
"""

import argparse
import asyncio
import json
import multiprocessing
import tempfile
import time
from pathlib import Path

from _common import SseClient, delivery_latencies, percentile  # noqa: E402  (puts the repo on sys.path)

from flask_sse import Message

from shared import keys
from shared.cli import processes
from shared.events import DeltaEvent
from shared.progress import _APPEND_AND_PUBLISH as APPEND_AND_PUBLISH, Publisher, publish_command
from shared.redis_stores import make_redis
from shared.settings import Settings
from shared.identity import Principal, issue_stream_token
from tests.stack import STORE_ENV, Stack

OTHER_STORES = ("broker", "exec_cache", "auth_memo")


# --- 1. publish throughput ----------------------------------------------------------------------
def _publish_for(url: str, index: int, turns: int, seconds: float, batch: int, ready, go, out) -> None:
    """Publish for `seconds`: one event per call as a worker does (batch 1), or `batch` calls of the
    same script per pipeline, so the servers rather than this Python process set the pace."""
    r = make_redis(url, Settings(), 4)
    publishers = [Publisher(f"bench{index}", f"t{i}", r=r) for i in range(turns)]
    payload = DeltaEvent(text="x" * 40)
    publishers[0].publish(payload)  # loads the script on every master
    calls = [(p, [p.log_key, keys.progress_marker(p.session_id, p.message_id, "none")]) for p in publishers]
    settings = Settings()
    wire = json.dumps(Message(payload.model_dump_json(), type="token").to_dict())
    args = [wire, "token", payload.model_dump_json(), settings.progress_log_maxlen, settings.progress_ttl_s * 1000]
    ready.put(index)
    go.wait()
    count, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        if batch == 1:
            publishers[count % turns].publish(payload)
            count += 1
            continue
        pipe = r.pipeline(transaction=False)
        for i in range(batch):
            publisher, script_keys = calls[(count + i) % turns]
            # EVAL, not EVALSHA: redis-py refuses EVALSHA in a Cluster pipeline (same for both topologies).
            pipe.execute_command("EVAL", APPEND_AND_PUBLISH, 2, *script_keys,
                                 *args, publisher.channel, "0", publish_command(r))
        pipe.execute()
        count += batch
    out.put(count)


def publish_rate(url: str, publishers: int, seconds: float, batch: int, turns: int = 60) -> float:
    ctx = multiprocessing.get_context("spawn")
    out, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_publish_for, args=(url, i, turns, seconds, batch, ready, go, out))
             for i in range(publishers)]
    for p in procs:
        p.start()
    for _ in procs:  # every process imported, connected and loaded the script before the clock starts
        ready.get(timeout=120)
    go.set()
    total = sum(out.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


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
def run_topology(name: str, base: Path, args) -> dict:
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
        rate = publish_rate(url, args.publishers, args.seconds, 1)
        print(f"{name:<8} publish: {rate:,.0f} events/s, {args.publishers} publisher processes, one call per event",
              flush=True)
        batched = publish_rate(url, args.publishers, args.seconds, args.batch)
        print(f"{name:<8} publish: {batched:,.0f} events/s, {args.publishers} publisher processes, "
              f"{args.batch} calls per pipeline", flush=True)
        stack.start_web(workers=args.web)
        time.sleep(2)
        result = asyncio.run(fan_out(stack.web_port, url, args.web * args.streams, args.turns, args.rounds,
                                     web_worker_pids(stack), store_ports))
        print(f"{name:<8} fan-out: {args.web} web x {args.streams} streams over {args.turns} turns: "
              f"p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms", flush=True)
        for i, held in enumerate(result["held"]):
            print(f"{name:<8} web process {i}: " + ", ".join(f"{store} {n}" for store, n in held.items()), flush=True)
        return {"rate": rate, "batched": batched, **result}
    finally:
        stack.stop()
        if cluster:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=50, help="script calls per pipeline in the batched run")
    parser.add_argument("--web", type=int, default=4)
    parser.add_argument("--streams", type=int, default=500, help="per web process")
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        single = run_topology("single", Path(tmp), args)
        cluster = run_topology("cluster", Path(tmp), args)
    print(f"\n3 shards / 1 server: publish events/s {cluster['rate'] / single['rate']:.2f}x (one call per event), "
          f"{cluster['batched'] / single['batched']:.2f}x (pipelined); "
          f"fan-out p99 {cluster['p99'] / single['p99']:.2f}x")


if __name__ == "__main__":
    main()
