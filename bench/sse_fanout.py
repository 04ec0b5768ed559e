"""SSE fan-out: N concurrent streams on ONE gunicorn gevent worker, turnstream's stream against stock
flask-sse, in the same run, on the same progress redis-server.

For each: the Redis connections the web process holds (CLIENT LIST on the progress instance), and
the latency for one published event to reach all N clients (p50/p99 over several events). Clients
are asyncio sockets in this process, so the figures include this client's own time to read N sockets.

    python bench/sse_fanout.py [--clients 2000 5000] [--events 20]
"""

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from _common import SseClient, delivery_latencies, percentile, start_stock_flask_sse  # noqa: E402  (puts the repo on sys.path)
from flask_sse import Message

from shared.cli import processes
from shared.events import DeltaEvent
from shared.identity import Principal, issue_stream_token
from shared.progress import Publisher
from tests.stack import Stack



async def hold_clients(port: int, path: str, count: int) -> list[SseClient]:
    clients = [SseClient() for _ in range(count)]
    for start in range(0, count, 250):
        for client in clients[start:start + 250]:
            asyncio.ensure_future(client.run(port, path))
        await asyncio.sleep(0.05)
    return clients


async def measure(port: int, path: str, count: int, events: int, wait_subscribed, publish, connections) -> dict:
    clients = await hold_clients(port, path, count)
    await wait_subscribed(clients)
    await asyncio.sleep(1.0)  # let the last subscriptions and log replays settle
    held = "/".join(map(str, connections()))
    latencies = await delivery_latencies(clients, events, publish, within_s=10, pause_s=0.1)
    return {"connections": held, "p50": percentile(latencies, 50), "p99": percentile(latencies, 99)}


async def wait_until(check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("clients did not all subscribe")
        await asyncio.sleep(0.1)


def web_connections(progress) -> tuple[int, int]:
    """Connections with a subscription, and all connections, on the progress server (but ours)."""
    theirs = [c for c in progress.client_list() if c.get("name") != "bench"]
    return sum(int(c["sub"]) > 0 for c in theirs), len(theirs)


def run_ours(stack: Stack, count: int, events: int) -> dict:
    """A fresh web process per run, so the connections counted are this run's alone."""
    port = processes.free_port()
    server = processes.web_server(stack.env, port, stack.log_dir / f"ours-{count}").start()
    try:
        return _measure_ours(stack, port, count, events)
    finally:
        server.stop()


def _measure_ours(stack: Stack, port: int, count: int, events: int) -> dict:
    sid, mid = "fanout", f"m{count}"
    token = issue_stream_token(Principal("bench", "bench", ()), sid, mid)
    publisher = Publisher(sid, mid)
    progress = stack.client("progress")
    progress.client_setname("bench")
    channel = f"agent:progress:{{{sid}:{mid}}}"
    return asyncio.run(measure(
        port, f"/stream/{sid}/{mid}?token={token}", count, events,
        # Every client has its stream open (it subscribes right after), and the channel is subscribed.
        wait_subscribed=lambda clients: wait_until(
            lambda: all(c.opened for c in clients) and progress.pubsub_numsub(channel)[0][1] >= 1),
        publish=lambda seq: publisher.publish(DeltaEvent(text=json.dumps({"seq": seq}))),
        connections=lambda: web_connections(progress)))


def run_stock(stack: Stack, count: int, events: int) -> dict:
    server, port = start_stock_flask_sse(stack.env["PROGRESS_REDIS_URL"], stack.log_dir)
    progress = stack.client("progress")
    progress.client_setname("bench")
    try:
        return asyncio.run(measure(
            port, "/stream?channel=bench", count, events,
            wait_subscribed=lambda clients: wait_until(lambda: progress.pubsub_numsub("bench")[0][1] >= count),
            publish=lambda seq: progress.publish("bench", json.dumps(Message({"seq": seq}, type="bench").to_dict())),
            connections=lambda: web_connections(progress)))
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[2000, 5000])
    parser.add_argument("--events", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), TURNSTREAM_SSE_HEARTBEAT_S="60", TURNSTREAM_WORKER_CONNECTIONS="12000")
        try:
            stack.start_redis()
            stack.apply_env()
            print(f"{'server':<12} {'clients':>7} {'subscr/all redis conns':>22} {'fan-out p50':>12} {'p99':>10}")
            for count in args.clients:
                for name, run in (("turnstream", run_ours), ("flask-sse", run_stock)):
                    result = run(stack, count, args.events)
                    print(f"{name:<12} {count:>7} {result['connections']:>22} {result['p50']:>9.1f} ms "
                          f"{result['p99']:>7.1f} ms", flush=True)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
