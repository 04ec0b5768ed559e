"""Hostile load: what a flood, an exhausting client and a runaway tool cost other users' turns.

One system (4 redis-servers, one Celery worker, gunicorn+gevent with one worker process, no tool
cached so every call reaches the tool server). Normal users each send turns one after another
(POST, then the SSE stream until `done`): a weather question and a calculation, alternately.
Their latencies are measured on the idle system first, then during each scenario, in the same
run; the script prints p50/p95/p99/max and the ratio of each scenario's p99 (and p95) to the idle
one. Each attack runs in a process of its own, as an attacker's client would be on a machine of its
own: in the measuring process its threads would hold the GIL the normal users' clients need, and
its latencies would count the client's own contention instead of the server's.

- flood: 2,000 idle connections held open: half SSE streams of turns that never end (heartbeating),
  half raw TCP connections that sent half a request line and then nothing (slowloris), each
  opened again as soon as the server drops it.
- exhaustion: 8 threads of one hostile user posting as fast as they can: over the rate limit
  (429), oversized bodies (413), JSON nested 20,000 deep (400), forged tokens (401).
- runaway: a hostile tenant's users sending `calculate (((9**99)**99)**99)**99` back to back
  from 4 threads, each a turn whose tool call must fail alone.

    python bench/hostile.py [--turns 60] [--min-seconds 35] [--users 3] [--flood 2000] [--only flood,exhaustion,runaway]
"""

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from _common import percentile  # noqa: E402  (puts the repo on sys.path)
import httpx

from shared import defaults
from shared.identity import Principal, issue_stream_token
from tests.sse import bearer, post_prompt, read_stream, tool_calls
from tests.stack import Stack

NORMAL_PROMPTS = ("What is the weather in Paris?", "calculate 6 * 7 + 1")
RUNAWAY = "calculate (((9**99)**99)**99)**99"


def normal_turns(stack: Stack, users: int, turns: int, tag: str, min_seconds: float = 0) -> tuple[list[tuple[float, float]], dict]:
    """`users` users, each sending turns back to back, at least `turns` each and for at least
    `min_seconds`: each accepted turn's POST→done in ms with when it ended (s into the phase), and the statuses of the posts that were
    refused (a user would retry those later). A user is a new one every 50 turns, below the turn
    rate limit, which is not what is measured here."""
    refused: dict[int | str, int] = {}
    phase_start = time.monotonic()
    until = phase_start + min_seconds

    def one_user(i: int) -> list[tuple[float, float]]:
        timings = []
        with httpx.Client(timeout=60) as client:
            n = 0
            while n < turns or time.monotonic() < until:
                n += 1
                auth = bearer(f"{tag}{i}u{n // 50}", "acme")
                started = time.perf_counter()
                try:
                    response = post_prompt(stack.base_url, f"{tag}{i}s{n}", NORMAL_PROMPTS[n % 2], headers=auth,
                                           client=client)
                except httpx.TimeoutException:
                    refused["timeout"] = refused.get("timeout", 0) + 1
                    continue
                if response.status_code != 202:
                    refused[response.status_code] = refused.get(response.status_code, 0) + 1
                    continue
                try:
                    follow(stack.base_url, response.json()["stream_url"], client)
                except (httpx.TimeoutException, TimeoutError):
                    refused["stream timeout"] = refused.get("stream timeout", 0) + 1
                    continue
                timings.append(((time.perf_counter() - started) * 1000, time.monotonic() - phase_start))
        return timings
    with ThreadPoolExecutor(users) as pool:
        return [t for user in pool.map(one_user, range(users)) for t in user], refused


def follow(base_url: str, stream_url: str, client: httpx.Client) -> list:
    """The stream until its terminal event, reconnecting with Last-Event-ID as EventSource does."""
    events: list = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        events += read_stream(base_url, stream_url, last_event_id=events[-1].id if events else None,
                              client=client, timeout=60)
        if events and events[-1].type in ("done", "error", "cancelled"):
            return events
        time.sleep(0.5)
    raise TimeoutError(f"no terminal event on {stream_url}")


@contextmanager
def attacking(attack, *args, threads: int = 1):
    """`attack(stop, counts, threads, *args)` in a process of its own for the duration of the
    block. The block starts once the attack is in place (the flood: its connections open); the
    dict it yields holds the attack's counts (the answers it got) after the block."""
    ctx = multiprocessing.get_context("spawn")  # a clean interpreter, not a fork of this threaded one
    stop, results = ctx.Event(), ctx.Queue()
    process = ctx.Process(target=_attack_process, args=(attack, threads, stop, results, *args), daemon=True)
    process.start()
    counts: dict = {}
    ready = results.get(timeout=120)  # the attack says when it is in place (the flood: connections open)
    if ready:
        print(f"  {ready}", flush=True)
    try:
        yield counts
    finally:
        stop.set()
        counts.update(results.get(timeout=120))
        process.join(30)


def _attack_process(attack, threads: int, stop, results, *args) -> None:
    counts: dict = {}
    ready, pool = attack(stop, counts, threads, *args)
    results.put(ready)
    stop.wait()
    if pool is not None:
        pool.shutdown(wait=True)
    results.put(dict(counts))
    results.close()
    results.join_thread()
    os._exit(0)  # the flood's connections close with the process, without asyncio's farewells


def run_threads(work, threads: int, stop) -> ThreadPoolExecutor:
    """`threads` threads running `work(stop)` until `stop` is set."""
    pool = ThreadPoolExecutor(threads)
    for _ in range(threads):
        pool.submit(work, stop)
    return pool


def count(counts: dict, key) -> None:
    counts[key] = counts.get(key, 0) + 1


# --- flood ---------------------------------------------------------------------------------
def flood_paths(count_of: int) -> list[str]:
    """The stream URLs the flood's SSE half holds: turns that never end, each of another user, as
    1,000 clients' streams would be (one user opening 1,000 streams at once meets the request limit)."""
    from shared import turns
    paths = []
    for i in range(count_of):
        sid, mid, flooder = f"flood{i}", uuid.uuid4().hex, Principal(f"flooder{i}", "evilcorp", ())
        turns.create_turn(sid, mid, flooder, "never sent")
        paths.append(f"/stream/{sid}/{mid}?token={issue_stream_token(flooder, sid, mid)}")
    return paths


def flood(stop, counts: dict, threads: int, port: int, count_of: int, paths: list[str]) -> tuple[str, None]:
    """`count_of` idle connections, opened by an asyncio loop in its own thread: half SSE streams,
    half half-sent request lines (sent again whenever the server drops one). Counts what the
    server did to them by the end."""
    loop = asyncio.new_event_loop()
    opened = {"sse": 0, "tcp": 0}
    tasks: set[asyncio.Task] = set()  # asyncio keeps only weak references to running tasks

    async def hold(kind: str, path: str) -> None:
        """One connection held open; a half-sent request line the server drops is sent again on a
        new connection at once, as a slowloris does, so the flood keeps its size."""
        first = True
        while first or (kind == "tcp" and not stop.is_set()):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                count(counts, f"{kind} refused")
                await asyncio.sleep(1)
                continue
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode() if kind == "sse" else b"GET /api/sessi")
            await writer.drain()
            if first:
                opened[kind] += 1
                first = False
            try:
                while await reader.read(65536):
                    pass
                count(counts, f"{kind} closed by the server")
            except OSError:
                count(counts, f"{kind} reset by the server")
            writer.close()

    async def open_all() -> None:
        for i in range(count_of):
            tasks.add(asyncio.ensure_future(hold("sse" if i % 2 == 0 else "tcp", paths[i // 2 % len(paths)])))
            if i % 200 == 199:
                await asyncio.sleep(0.05)

    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(open_all(), loop).result()
    deadline = time.monotonic() + 60
    while sum(opened.values()) < count_of and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # the streams' opening reads settle before the measured turns start
    return f"flood: {opened['sse']} SSE streams + {opened['tcp']} half-sent request lines opened", None


# --- exhaustion ------------------------------------------------------------------------------
def exhaust(stop, counts: dict, threads: int, base_url: str) -> tuple[str, ThreadPoolExecutor]:
    url = f"{base_url}/api/sessions/hostile/messages"
    auth = {**bearer("exhauster", "evilcorp"), "Content-Type": "application/json"}
    bodies = [b'{"prompt": "hello"}', b'{"prompt": "' + b"x" * 60000 + b'"}',
              b"[" * 20000 + b"]" * 20000, b'{"prompt": "hello"}']
    forged = {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.forged", "Content-Type": "application/json"}

    def work(stop) -> None:
        with httpx.Client(timeout=30) as client:
            n = 0
            while not stop.is_set():
                headers = forged if n % 5 == 4 else auth
                try:
                    status = client.post(url, content=bodies[n % len(bodies)], headers=headers).status_code
                except httpx.TimeoutException:
                    status = "timeout"
                count(counts, status)
                n += 1
    return "", run_threads(work, threads, stop)


# --- runaway tool -------------------------------------------------------------------------------
def runaway(stop, outcomes: dict, threads: int, base_url: str) -> tuple[str, ThreadPoolExecutor]:
    def work(stop) -> None:
        with httpx.Client(timeout=60) as client:
            n = 0
            while not stop.is_set():
                user = f"runaway{threading.get_ident()}x{n // 50}"  # a fresh user every 50: no rate limit
                n += 1
                try:
                    response = post_prompt(base_url, f"r{uuid.uuid4().hex[:12]}", RUNAWAY,
                                           headers=bearer(user, "evilcorp"), client=client)
                except httpx.TimeoutException:
                    count(outcomes, "post timeout")
                    continue
                if response.status_code != 202:
                    count(outcomes, f"refused {response.status_code}")
                    continue
                try:
                    events = follow(base_url, response.json()["stream_url"], client)
                except (httpx.TimeoutException, TimeoutError):
                    count(outcomes, "no terminal event")
                    continue
                tool = [e.data for e in tool_calls(events)]  # each call's final event
                count(outcomes, tool[0]["status"] if tool else events[-1].type)
    return "", run_threads(work, threads, stop)


def report(name: str, measured: tuple[list[tuple[float, float]], dict], idle: tuple[float, float] | None) -> tuple[float, float]:
    """One phase's line: p50/p95/p99/max of the normal turns and p99 (p95) against idle's."""
    turns, refused = measured
    timings = [ms for ms, _ in turns]
    p50, p95, p99 = (percentile(timings, q) for q in (50, 95, 99))
    # When the slowest 1% ended, in seconds into the phase: a burst at its start, or spread over it.
    slowest = sorted(turns, reverse=True)[:max(1, len(turns) // 100)]
    when = ", ".join(f"{at:.0f}" for _, at in sorted(slowest, key=lambda t: t[1]))
    ratio = f"{p99 / idle[1]:5.2f}x ({p95 / idle[0]:5.2f}x)" if idle else " 1.00x ( 1.00x)"
    print(f"{name:<11} n={len(timings):<4} p50={p50:7.1f}  p95={p95:7.1f}  p99={p99:7.1f}  max={max(timings):7.1f} ms"
          f"  p99 (p95) vs idle={ratio}  refused posts={refused or 0}\n"
          f"{'':<12}slowest 1% ended at {when} s into the phase", flush=True)
    return p95, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=60, help="turns per normal user per phase")
    parser.add_argument("--users", type=int, default=3, help="normal users sending turns at once")
    parser.add_argument("--min-seconds", type=float, default=35.0,
                        help="each phase lasts at least this long (two SSE heartbeat periods of 15 s)")
    parser.add_argument("--flood", type=int, default=2000, help="idle connections in the flood")
    parser.add_argument("--only", default="flood,exhaustion,runaway", help="scenarios to run, comma-separated")
    args = parser.parse_args()
    scenarios = set(args.only.split(","))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tools_file = Path(tmp) / "tool-cache.toml"
        tools_file.write_text("[global]\nvolatile = []\n")  # nothing cached: every call reaches the tools
        stack = Stack(Path(tmp), TURNSTREAM_EXEC_CACHE_TOOLS_FILE=str(tools_file),
                      TURNSTREAM_SSE_HEARTBEAT_S="15", TURNSTREAM_WORKER_CONNECTIONS="12000",
                      TURNSTREAM_REQUEST_RATE_LIMIT=defaults.REQUEST_RATE_LIMIT)  # tests' Stack lifts it
        try:
            stack.start_redis()
            stack.apply_env()
            stack.start_worker()
            stack.start_web()
            normal_turns(stack, args.users, 5, "warm")
            idle = report("idle", normal_turns(stack, args.users, args.turns, "idle", args.min_seconds), None)
            if "flood" in scenarios:
                with attacking(flood, stack.web_port, args.flood, flood_paths(args.flood // 2)) as counts:
                    report("flood", normal_turns(stack, args.users, args.turns, "flood", args.min_seconds), idle)
                print(f"  flood connections ended by the server: {counts or 0}")
            if "exhaustion" in scenarios:
                with attacking(exhaust, stack.base_url, threads=8) as counts:
                    report("exhaustion", normal_turns(stack, args.users, args.turns, "exh", args.min_seconds), idle)
                print(f"  exhaustion answers: {dict(sorted(counts.items(), key=str))}")
            if "runaway" in scenarios:
                with attacking(runaway, stack.base_url, threads=4) as outcomes:
                    report("runaway", normal_turns(stack, args.users, args.turns, "run", args.min_seconds), idle)
                print(f"  runaway turns: {outcomes}")
        finally:
            stack.stop()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
