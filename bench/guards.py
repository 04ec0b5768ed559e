"""Benchmark of the tool-call guards, each number against a baseline measured in the same run.

    .venv/bin/python bench/guards.py [--iterations 3000] [--conversations 60]

Starts its own redis-servers (exec_cache and auth_memo confs) on free ports and measures:
  1. hit latency: an exec-cache hit vs a raw redis-py GET (target <= 1.5x); a batch preflight of
     10 tools vs a raw GET (<= 2x); the batch preflight vs a verifier with 20 ms latency (>= 100x faster);
  2. upstream calls saved on a replayed multi-turn workload whose tool calls repeat with fresh
     timestamps and request ids: our keys vs full-payload hashing (target >= 75% vs ~0%);
  3. upstream runs for 200 concurrent identical misses from 4 processes (target 1; naive get-then-set
     as the baseline)."""

import argparse
import hashlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from shared.cli import processes  # noqa: E402
from shared.guards.auth_memo import AuthMemo  # noqa: E402
from shared.guards.declarations import Declarations, ToolSpec, load_declarations  # noqa: E402
from shared.guards.exec_cache import ExecCache  # noqa: E402
from shared.guards.verifiers import HttpVerifier, PolicyFileVerifier, shipped_policy_path  # noqa: E402
from shared.identity import Principal  # noqa: E402
from tests.guard_support import pooled, release_together  # noqa: E402

TEN_TOOLS = ["weather", "search_kb", "calculator", "my_orders", "create_ticket", "t5", "t6", "t7", "t8", "t9"]
ALICE = Principal("alice", "acme", ("analyst",))
STAMPEDE_SPEC = ToolSpec("slow_lookup", cacheable=True, scope="global", ttl_s=60)


def cache_on(r: redis.Redis, declarations: Declarations | None = None) -> ExecCache:
    return ExecCache(r, declarations or load_declarations(), 2700, 256 * 1024, 0, 10.0, 20.0, 4.0)


def paired_us(ours, baseline, iterations: int) -> tuple[float, float]:
    """Median microseconds per call of `ours` and `baseline`, called alternately so that both see the
    same machine load (medians shrug off the calls that were preempted)."""
    clock = time.perf_counter
    ours_t, base_t = [], []
    for _ in range(iterations):
        started = clock()
        ours()
        middle = clock()
        baseline()
        ours_t.append(middle - started)
        base_t.append(clock() - middle)
    return statistics.median(ours_t) * 1e6, statistics.median(base_t) * 1e6


class SlowIdentityProvider:
    """An HTTP verifier endpoint that takes `delay_s` per check (analyst: the shipped policy's tools)."""

    def __init__(self, delay_s: float):
        allowed = {"weather", "search_kb", "calculator", "my_orders"}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(delay_s)
                data = json.dumps({"allowed": body["tool"] in allowed}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.port = processes.free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/check"


# --- 1. hit latency -----------------------------------------------------------------------------------------

def bench_latency(exec_r: redis.Redis, auth_r: redis.Redis, iterations: int) -> list[tuple]:
    cache = cache_on(exec_r)
    params = {"city": "Paris", "units": "metric", "timestamp": 1, "request_id": "r-1"}
    value = {"city": "Paris", "temp_c": 14, "condition": "light rain", "wind_kmh": 18}
    cache.run("weather", params, ALICE, lambda p: value)
    stored_key = cache.key(cache.declarations.spec("weather"), params, ALICE).result
    raw = lambda: exec_r.get(stored_key)  # noqa: E731
    hit, raw_get = paired_us(lambda: cache.run("weather", params, ALICE, lambda p: value), raw, iterations)
    assert cache.run("weather", params, ALICE, lambda p: value).cache == "hit"

    memo = AuthMemo(auth_r, PolicyFileVerifier(shipped_policy_path()), 1800, 60)
    memo.preflight(ALICE, TEN_TOOLS)
    batch, raw_get_2 = paired_us(lambda: memo.preflight(ALICE, TEN_TOOLS), raw, iterations)
    assert {d.memo for d in memo.preflight(ALICE, TEN_TOOLS).decisions.values()} == {"hit"}

    idp = SlowIdentityProvider(0.020)
    direct = AuthMemo(auth_r, HttpVerifier(idp.url, timeout_s=2.0, concurrency=16), 1800, 60, strict=True)
    verifier, batch_2 = paired_us(lambda: direct.preflight(ALICE, TEN_TOOLS), lambda: memo.preflight(ALICE, TEN_TOOLS),
                                  30)
    idp.server.shutdown()
    return [
        ("exec-cache hit / raw GET", hit, raw_get, hit / raw_get, "<= 1.5x", hit / raw_get <= 1.5),
        ("batch preflight of 10 tools / raw GET", batch, raw_get_2, batch / raw_get_2, "<= 2x",
         batch / raw_get_2 <= 2),
        ("20 ms verifier (10 tools, concurrent) / batch preflight", verifier, batch_2, verifier / batch_2,
         ">= 100x", verifier / batch_2 >= 100),
    ]


# --- 2. upstream calls saved ----------------------------------------------------------------------------------

def workload(conversations: int, seed: int = 7) -> list[tuple[Principal, str, dict]]:
    """Multi-turn conversations: follow-ups repeat earlier tool calls; every call carries fresh volatile
    fields (timestamp, request id, UI hint) and the client's own key order."""
    rng = random.Random(seed)
    cities = ["Paris", "London", "Berlin", "Tokyo", "Sydney", "Madrid", "Rome", "New York"]
    questions = ["refund policy", "reset password", "shipping time", "cancel order", "change address",
                 "invoice copy", "warranty", "gift cards"]
    expressions = [f"{a} * {b}" for a in range(2, 6) for b in range(3, 6)]
    users = [Principal(f"user{i}", f"tenant{i % 3}", ("analyst",)) for i in range(12)]
    calls = []
    for _ in range(conversations):
        user = rng.choice(users)
        topic_city, topic_q = rng.choice(cities), rng.choice(questions)
        for turn in range(rng.randint(3, 6)):
            picks = [("weather", {"city": topic_city if rng.random() < 0.7 else rng.choice(cities), "units": "metric"}),
                     ("search_kb", {"query": topic_q, "limit": 3}),
                     ("calculator", {"expression": rng.choice(expressions)}),
                     ("my_orders", {"status": "open", "page": {"size": 10, "number": 1}})]
            for tool, args in rng.sample(picks, rng.randint(1, 3)):
                noisy = {**args, "timestamp": time.time() + turn, "request_id": uuid.uuid4().hex,
                         "ui_hint": {"panel": rng.choice(["side", "main"]), "trace_id": uuid.uuid4().hex}}
                items = list(noisy.items())
                rng.shuffle(items)
                calls.append((user, tool, dict(items)))
    return calls


def bench_saved(exec_r: redis.Redis, conversations: int) -> list[tuple]:
    exec_r.flushdb()
    calls = workload(conversations)
    cache = cache_on(exec_r)
    ours = {"runs": 0}

    def upstream(params: dict) -> dict:
        ours["runs"] += 1
        return {"answer": len(json.dumps(params))}

    for principal, tool, args in calls:
        cache.run(tool, args, principal, upstream)

    full_payload_runs = 0  # the baseline: sha256 of the whole payload as sent, no stripping, no sorting
    for _principal, tool, args in calls:
        key = "bench:full:" + hashlib.sha256(json.dumps({"tool": tool, "args": args}).encode()).hexdigest()
        if exec_r.get(key) is None:
            full_payload_runs += 1
            exec_r.set(key, "1", ex=2700)
    total = len(calls)
    saved_ours = 1 - ours["runs"] / total
    saved_full = 1 - full_payload_runs / total
    return [(f"upstream calls saved, {conversations} conversations, {total} tool calls",
             saved_ours * 100, saved_full * 100, None, ">= 75% (vs ~0%)", saved_ours >= 0.75)]


# --- 3. stampede ----------------------------------------------------------------------------------------------

def stampede_child(url: str, threads: int, naive: bool) -> None:
    r = pooled(url)
    cache = cache_on(r, Declarations(tools={STAMPEDE_SPEC.name: STAMPEDE_SPEC}))

    def upstream(params: dict) -> dict:
        r.incr("bench:runs")
        time.sleep(0.2)
        return {"city": params["city"], "temp_c": 14}

    def naive_call(params: dict) -> None:
        key = "bench:naive:" + params["city"]
        if r.get(key) is None:
            r.set(key, json.dumps(upstream(params)), ex=60)

    def call(i: int) -> None:
        params = {"city": "Paris", "request_id": f"r{i}"}
        naive_call(params) if naive else cache.run(STAMPEDE_SPEC, params, ALICE, upstream)

    release_together(threads, call)


def stampede_runs(r: redis.Redis, url: str, naive: bool) -> int:
    r.flushdb()
    command = [sys.executable, __file__, "--stampede-child", url] + (["--naive"] if naive else [])
    children = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for _ in range(4)]
    for child in children:
        while child.stdout.readline().strip() != "ready":
            pass
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        child.wait(timeout=120)
    return int(r.get("bench:runs") or 0)


def bench_stampede(exec_r: redis.Redis, url: str) -> list[tuple]:
    ours = stampede_runs(exec_r, url, naive=False)
    naive = stampede_runs(exec_r, url, naive=True)
    return [("upstream runs for 200 concurrent identical misses (4 processes x 50)", ours, naive, None, "1",
             ours == 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--conversations", type=int, default=60)
    parser.add_argument("--stampede-child", metavar="URL")
    parser.add_argument("--naive", action="store_true")
    args = parser.parse_args()
    if args.stampede_child:
        return stampede_child(args.stampede_child, 50, args.naive)

    with tempfile.TemporaryDirectory() as tmp:
        servers = {store: processes.redis_server(store, processes.free_port(), Path(tmp)).start()
                   for store in ("exec_cache", "auth_memo")}
        try:
            exec_url = f"redis://127.0.0.1:{servers['exec_cache'].port}/0"
            exec_r, auth_r = pooled(exec_url), pooled(f"redis://127.0.0.1:{servers['auth_memo'].port}/0")
            rows = bench_latency(exec_r, auth_r, args.iterations)
            rows += bench_saved(exec_r, args.conversations)
            rows += bench_stampede(exec_r, exec_url)
        finally:
            for server in servers.values():
                server.stop()

    print(f"{'measure':<72} {'ours':>10} {'baseline':>10} {'ratio':>8}  target")
    for name, ours, base, ratio, target, met in rows:
        unit = "us" if ratio is not None else ("%" if "saved" in name else "")
        ratio_text = f"{ratio:.2f}x" if ratio is not None else "-"
        print(f"{name:<72} {ours:>8.1f}{unit:<2} {base:>8.1f}{unit:<2} {ratio_text:>8}  {target} "
              f"{'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
