"""Helpers shared by the benchmark scripts."""

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary(name: str, values_ms: list[float]) -> str:
    return (f"{name:<34} n={len(values_ms):<5} p50={percentile(values_ms, 50):8.2f} ms  "
            f"p99={percentile(values_ms, 99):8.2f} ms  mean={statistics.mean(values_ms):8.2f} ms")


def start_stock_flask_sse(progress_url: str, log_dir: Path):
    """Stock flask-sse (bench/stock_sse_app.py) under our gunicorn+gevent config, one worker.
    Returns the running executor and its port."""
    from mirakuru import HTTPExecutor

    from shared.cli import processes

    port = processes.free_port()
    env = processes.child_env({"SSE_REDIS_URL": progress_url})
    env["PYTHONPATH"] = f"{Path(__file__).parent}:{env['PYTHONPATH']}"
    server = HTTPExecutor([sys.executable, "-m", "gunicorn", "-c", str(processes.DEPLOY / "gunicorn.conf.py"),
                           "-b", f"127.0.0.1:{port}", "-w", "1", "stock_sse_app:app"],
                          url=f"http://127.0.0.1:{port}/healthz", method="GET", envvars=env, timeout=60,
                          stdout=open(log_dir / "stock.log", "ab"), stderr=-2)
    return server.start(), port


class SseClient:
    """One raw SSE connection on an asyncio socket (thousands fit in one process): it notes when
    the stream opened and when each numbered event (`{"seq": n}`, bare or inside flask-sse's
    `text`) arrived. `turn` says which turn's stream it holds, for benches with several."""

    def __init__(self, turn: int = 0) -> None:
        self.turn = turn
        self.received: dict[int, float] = {}
        self.opened = False
        self.writer: asyncio.StreamWriter | None = None

    async def run(self, port: int, path: str) -> None:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        await self.writer.drain()
        while line := await reader.readline():
            if line.startswith(b": stream open"):
                self.opened = True
            elif line.startswith(b"data:") and b'"seq' in line:
                payload = json.loads(line[5:].decode())
                seq = json.loads(payload["text"])["seq"] if "text" in payload else payload["seq"]
                self.received[int(seq)] = time.perf_counter()


async def delivery_latencies(clients: list[SseClient], rounds: int, publish, within_s: float,
                             pause_s: float) -> list[float]:
    """For each round `seq`: publish(seq), then the milliseconds until every client has event `seq`
    (`within_s` if some never do, with a line saying how many did). Closes the clients at the end."""
    latencies = []
    for seq in range(rounds):
        started = time.perf_counter()
        publish(seq)
        deadline = started + within_s
        while sum(seq in c.received for c in clients) < len(clients) and time.perf_counter() < deadline:
            await asyncio.sleep(0.002)
        arrived = [c.received[seq] for c in clients if seq in c.received]
        latencies.append(((max(arrived) if arrived else deadline) - started) * 1000)
        if len(arrived) < len(clients):
            print(f"  event {seq}: only {len(arrived)}/{len(clients)} clients got it within {within_s:g} s",
                  file=sys.stderr, flush=True)
        await asyncio.sleep(pause_s)
    for client in clients:
        if client.writer:
            client.writer.close()
    return latencies
