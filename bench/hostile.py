"""Hostile load: what a flood, an exhausting client and a runaway tool cost other users' turns.

One system (4 redis-servers, one Celery worker, gunicorn+gevent with one worker process, no tool
cached so every call reaches the tool server). Normal users each send turns one after another
(POST, then the SSE stream until `done`): a weather question and a calculation, alternately.
Their latencies are measured on the idle system first, then during each scenario, in the same
run; the script prints p50/p99 and the ratio of each scenario's p99 to the idle p99.

- flood: 2,000 idle connections held open: half SSE streams of a running turn (heartbeating),
  half raw TCP connections that sent half a request line and then nothing (slowloris).
- exhaustion: 8 threads of one hostile user posting as fast as they can: over the rate limit
  (429), oversized bodies (413), JSON nested 20,000 deep (400), forged tokens (401).
- runaway: a hostile tenant's users sending `calculate (((9**99)**99)**99)**99` back to back
  from 4 threads, each a turn whose tool call must fail alone.

    python bench/hostile.py [--turns 60] [--users 3] [--flood 2000]
"""

import argparse
import asyncio
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

from shared.identity import Principal, issue_stream_token
from tests.sse import bearer, post_prompt, read_stream, tool_calls
from tests.stack import Stack

NORMAL_PROMPTS = ("What is the weather in Paris?", "calculate 6 * 7 + 1")
RUNAWAY = "calculate (((9**99)**99)**99)**99"


def normal_turns(stack: Stack, users: int, turns: int, tag: str) -> tuple[list[float], dict]:
    """`users` users, each sending `turns` turns back to back: every accepted turn's POST→done in
    ms, and the statuses of the posts that were refused (a user would retry those later)."""
    refused: dict[int | str, int] = {}

    def one_user(i: int) -> list[float]:
        timings = []
        auth = bearer(f"{tag}{i}", "acme")
        with httpx.Client(timeout=60) as client:
            for n in range(turns):
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
                timings.append((time.perf_counter() - started) * 1000)
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
def background(work, threads: int):
    """Run `work(stop_event)` in `threads` threads for the duration of the block."""
    stop = threading.Event()
    pool = ThreadPoolExecutor(threads)
    futures = [pool.submit(work, stop) for _ in range(threads)]
    try:
        yield
    finally:
        stop.set()
        for future in futures:
            future.result()
        pool.shutdown()


# --- flood ---------------------------------------------------------------------------------
@contextmanager
def flood(stack: Stack, count: int):
    """`count` idle connections, opened by an asyncio loop in its own thread."""
    sid, mid = "flood", uuid.uuid4().hex
    from shared import turns
    turns.create_turn(sid, mid, Principal("flooder", "evilcorp", ()), "never sent")  # a turn that never ends
    path = f"/stream/{sid}/{mid}?token={issue_stream_token(Principal('flooder', 'evilcorp', ()), sid, mid)}"
    loop = asyncio.new_event_loop()
    writers: list[asyncio.StreamWriter] = []
    opened = {"sse": 0, "tcp": 0}

    async def hold(kind: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.web_port)
        writers.append(writer)
        if kind == "sse":
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        else:
            writer.write(b"GET /api/sessi")  # half a request line, then silence
        await writer.drain()
        opened[kind] += 1
        while await reader.read(65536):
            pass

    async def open_all() -> None:
        for i in range(count):
            asyncio.ensure_future(hold("sse" if i % 2 == 0 else "tcp"))
            if i % 200 == 199:
                await asyncio.sleep(0.05)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(open_all(), loop).result()
    deadline = time.monotonic() + 60
    while sum(opened.values()) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"  flood: {opened['sse']} SSE streams + {opened['tcp']} half-open TCP connections held", flush=True)
    try:
        yield
    finally:
        for writer in writers:
            loop.call_soon_threadsafe(writer.close)
        time.sleep(1)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


# --- exhaustion ------------------------------------------------------------------------------
def exhaust(stack: Stack):
    url = f"{stack.base_url}/api/sessions/hostile/messages"
    auth = {**bearer("exhauster", "evilcorp"), "Content-Type": "application/json"}
    bodies = [b'{"prompt": "hello"}', b'{"prompt": "' + b"x" * 60000 + b'"}',
              b"[" * 20000 + b"]" * 20000, b'{"prompt": "hello"}']
    forged = {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.forged", "Content-Type": "application/json"}
    counts: dict[int | str, int] = {}

    def work(stop: threading.Event) -> None:
        with httpx.Client(timeout=30) as client:
            n = 0
            while not stop.is_set():
                headers = forged if n % 5 == 4 else auth
                try:
                    status = client.post(url, content=bodies[n % len(bodies)], headers=headers).status_code
                except httpx.TimeoutException:
                    status = "timeout"
                counts[status] = counts.get(status, 0) + 1
                n += 1
    return work, counts


# --- runaway tool -------------------------------------------------------------------------------
def runaway(stack: Stack):
    outcomes: dict[str, int] = {}

    def work(stop: threading.Event) -> None:
        with httpx.Client(timeout=60) as client:
            n = 0
            while not stop.is_set():
                user = f"runaway{threading.get_ident()}x{n // 50}"  # a fresh user every 50: no rate limit
                n += 1
                try:
                    response = post_prompt(stack.base_url, f"r{uuid.uuid4().hex[:12]}", RUNAWAY,
                                           headers=bearer(user, "evilcorp"), client=client)
                except httpx.TimeoutException:
                    outcomes["post timeout"] = outcomes.get("post timeout", 0) + 1
                    continue
                if response.status_code != 202:
                    outcomes[f"refused {response.status_code}"] = outcomes.get(f"refused {response.status_code}", 0) + 1
                    continue
                try:
                    events = follow(stack.base_url, response.json()["stream_url"], client)
                except (httpx.TimeoutException, TimeoutError):
                    outcomes["no terminal event"] = outcomes.get("no terminal event", 0) + 1
                    continue
                tool = [e.data for e in tool_calls(events)]  # each call's final event
                key = tool[0]["status"] if tool else events[-1].type
                outcomes[key] = outcomes.get(key, 0) + 1
    return work, outcomes


def report(name: str, measured: tuple[list[float], dict], idle_p99: float | None) -> float:
    timings, refused = measured
    p50, p99 = percentile(timings, 50), percentile(timings, 99)
    ratio = f"{p99 / idle_p99:6.2f}x" if idle_p99 else "   1.00x"
    print(f"{name:<12} n={len(timings):<4} p50={p50:8.1f} ms  p99={p99:8.1f} ms  p99 ratio vs idle={ratio}  "
          f"refused posts={refused or 0}", flush=True)
    return p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=60, help="turns per normal user per phase")
    parser.add_argument("--users", type=int, default=3, help="normal users sending turns at once")
    parser.add_argument("--flood", type=int, default=2000, help="idle connections in the flood")
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tools_file = Path(tmp) / "tool-cache.toml"
        tools_file.write_text("[global]\nvolatile = []\n")  # nothing cached: every call reaches the tools
        stack = Stack(Path(tmp), TURNSTREAM_EXEC_CACHE_TOOLS_FILE=str(tools_file),
                      TURNSTREAM_SSE_HEARTBEAT_S="15", TURNSTREAM_WORKER_CONNECTIONS="12000")
        try:
            stack.start_redis()
            stack.apply_env()
            stack.start_worker()
            stack.start_web()
            normal_turns(stack, args.users, 5, "warm")
            idle = report("idle", normal_turns(stack, args.users, args.turns, "idle"), None)
            with flood(stack, args.flood):
                report("flood", normal_turns(stack, args.users, args.turns, "flood"), idle)
            work, counts = exhaust(stack)
            with background(work, 8):
                report("exhaustion", normal_turns(stack, args.users, args.turns, "exh"), idle)
            print(f"  exhaustion answers: {dict(sorted(counts.items()))}")
            work, outcomes = runaway(stack)
            with background(work, 4):
                report("runaway", normal_turns(stack, args.users, args.turns, "run"), idle)
            print(f"  runaway tool calls: {outcomes}")
        finally:
            stack.stop()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
