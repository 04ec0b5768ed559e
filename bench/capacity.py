"""Capacity: 32 callers in a loop, against a bare 4-task Celery chain in the same run.

Each caller loops: POST a prompt, open its SSE stream, read to `done` (rules reasoner,
TURNSTREAM_TOOL_LATENCY_MS=0, `turnstream dev`'s worker processes and one gunicorn worker,
Flower's task events on as deployed). The baseline is a bare chain of four no-op tasks on the
same broker with the same worker processes (the same pools, its steps alternating between the
two workers' queues as a turn's steps do), driven by the same number of callers.

Printed, all from this one run:
- throughput at N callers, turnstream / bare chain, and the median ratio over --rounds pairs of
  busy runs alternated between the two (the host's noise moves single runs by +-20 %);
- the same contract's floor, bench/bare_web.py (the bare chain behind a minimal Flask POST, an
  event log and an SSE stream, same gunicorn config): its idle turn, first event and throughput,
  so turnstream's own cost and the cost of HTTP + SSE are told apart; and its idle turn with the
  round trips turnstream's guarantees need per step (`?durable=1`, noop_app.durable_step);
- POST -> first SSE event p50/p99, busy (split into POST -> 202 and the stream's open, with the
  callers' own event-loop lag) and idle; POST -> done; two baselines for it under the same
  kinds of load: the bare chain's apply_async -> its first task running, and GET /healthz on the
  busy web process (a request that does nothing);
- a single idle turn against a single idle bare chain (p50 ratio), with every baseline's idle
  turn: all of them up at once, in alternated blocks of turns of one kind, so the ratios come
  from the same minutes (idle_interleaved; measured minutes apart, the host's drift moved them
  by 20-30 %);
- the CPU each process spends per turn (from /proc), and each Redis store's commands per turn;
- a scaling sweep: 1 -> 2 -> 4 tools-worker processes, then 1 -> 2 -> 4 gunicorn workers, as
  ratios of throughput to the 1-process run, and the same sweeps of the baselines (gevent worker
  processes under the bare chain, gunicorn workers under bare_web.py): what the box allows;
- with --profile: py-spy (installed on demand) on the busy processes, CPU by component;
- with --events-cost: one more busy run with Flower's task events off, against the run with them on.

turnstream's workers lower their CPU priority as deployed (TURNSTREAM_WORKER_NICE, shared.nice);
the bare chain's keep theirs (stock Celery, with no web tier to give way to); the workers under
bare_web.py get turnstream's, so the floor is that of the same design.

Throughput counts the turns that end inside the measured window (steady state); CPU and Redis
commands per turn are over everything the busy run did (warm-up and drain included) divided by
every turn it finished. CPU time per turn is the figure least disturbed by other load on the
machine; wall-clock latencies are not.

    python bench/capacity.py [--callers 32] [--seconds 20] [--rounds 3] [--no-sweep] [--profile] [--events-cost]
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from _common import REPO_ROOT, percentile  # noqa: E402  (puts the repo on sys.path)
import httpx
import psutil
import run_delay
from httpx_sse import aconnect_sse
from mirakuru import HTTPExecutor, SimpleExecutor

from shared.cli import processes
from shared.settings import get_settings
from tests.sse import bearer
from tests.stack import Stack

PROMPT = "calculate 6 * 7"
PY_SPY = "py-spy==0.4.3"
BARE_QUEUES = ("noop_tools", "noop_llm")


# --- turnstream under load ------------------------------------------------------------------
@dataclass
class Turn:
    posted: float
    first_event: float
    done: float
    answered: float = 0.0  # the 202 (the first event's path: the POST, then the stream's open)


@dataclass
class LoadResult:
    turns: list[Turn] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0
    completed: int = 0  # every turn that finished, warm-up and drain included (the CPU meter's span)
    start: float = 0.0  # the measured window's start (perf_counter)
    loop_lag_ms: list[float] = field(default_factory=list)  # the client's own event-loop delays
    healthz_ms: list[float] = field(default_factory=list)  # the web tier's cheapest request, same load
    waits: list[str] = field(default_factory=list)  # where the first events' time went, by process (run_delay)

    @property
    def throughput(self) -> float:
        return len(self.turns) / self.seconds if self.seconds else 0.0

    def ms(self, attr: str) -> list[float]:
        """Latencies of the turns posted inside the window too (not in the start-up burst)."""
        return [(getattr(t, attr) - t.posted) * 1000 for t in self.turns if t.posted >= self.start]


def turn_path(session_id: str) -> str:
    return f"/api/sessions/{session_id}/messages"


def bare_web_path(session_id: str) -> str:  # bench/bare_web.py has no sessions
    return "/turns"


def durable_web_path(session_id: str) -> str:  # ... and with the guarantees' round trips
    return "/turns?durable=1"


def fewest_web_path(session_id: str) -> str:  # ... the same writes in the fewest round trips
    return "/turns?durable=fewest"


def overlap_web_path(session_id: str) -> str:  # ... and those sent to both servers at once
    return "/turns?durable=overlap"


def mandated_web_path(session_id: str) -> str:  # ... and what other issues require of a turn, at its least
    return "/turns?durable=mandated"


async def _one_turn(client: httpx.AsyncClient, base_url: str, session_id: str, path_of=turn_path) -> Turn:
    posted = time.perf_counter()
    response = await client.post(base_url + path_of(session_id), json={"prompt": PROMPT})
    response.raise_for_status()
    answered = time.perf_counter()
    first = None
    async with aconnect_sse(client, "GET", base_url + response.json()["stream_url"]) as source:
        async for sse in source.aiter_sse():
            if not sse.data:
                continue
            first = first or time.perf_counter()
            if sse.event == "done":
                return Turn(posted, first, time.perf_counter(), answered)
            if sse.event in ("error", "cancelled"):
                raise RuntimeError(f"turn ended with {sse.event}: {sse.data}")
    raise RuntimeError("stream closed before done")


async def _caller(base_url: str, headers: dict, start: float, stop: float, result: LoadResult,
                  path_of=turn_path) -> None:
    session_id = f"cap-{uuid.uuid4().hex[:12]}"
    async with httpx.AsyncClient(headers=headers, timeout=60) as client:  # keep-alive, as a browser
        while time.perf_counter() < stop:
            try:
                turn = await _one_turn(client, base_url, session_id, path_of)
            except (httpx.HTTPError, RuntimeError) as exc:
                result.errors += 1
                print(f"  caller error: {exc}", file=sys.stderr)
                await asyncio.sleep(0.1)
                continue
            result.completed += 1
            if start <= turn.done <= stop:  # steady state: what completes inside the window counts
                result.turns.append(turn)


async def _loop_lag(start: float, stop: float, lags: list[float], tick: float = 0.005) -> None:
    """How late the callers' own event loop wakes (a 5 ms sleep's overshoot): every latency this
    client measures includes up to that much of its own delay in noticing a response."""
    while time.perf_counter() < stop:
        before = time.perf_counter()
        await asyncio.sleep(tick)
        if before >= start:
            lags.append((time.perf_counter() - before - tick) * 1000)


async def _healthz(base_url: str, start: float, stop: float, latencies: list[float], every: float = 0.05) -> None:
    """GET /healthz (no auth, no Redis, no body) every 50 ms during the load: the latency of the
    web process's cheapest request, i.e. of its scheduling alone, next to the POST's."""
    async with httpx.AsyncClient(timeout=60) as client:
        while time.perf_counter() < stop:
            before = time.perf_counter()
            response = await client.get(f"{base_url}/healthz")
            if before >= start and response.status_code == 200:
                latencies.append((time.perf_counter() - before) * 1000)
            await asyncio.sleep(every)


def drive_turns(base_url: str, callers: int, seconds: float, warmup: float = 3.0, path_of=turn_path,
                watch: dict[str, list[int]] | None = None) -> LoadResult:
    """`callers` loops for warmup + seconds; the turns that end inside the measured window count.
    `watch`: processes whose run and run-queue wait to split each first event into (run_delay)."""
    if watch is not None:
        with run_delay.Sampler({**watch, "bench client": [os.getpid()]}) as sampler:
            result = drive_turns(base_url, callers, seconds, warmup, path_of)
        window = (result.start, result.start + result.seconds)
        shares = sampler.shares(*window)
        result.waits = ["  share of the window each process ran / waited for a core: " + ", ".join(
            f"{k} {shares.run_ms[k]:.0%} / {shares.wait_ms[k]:.0%}" for k in sampler.names)]
        result.waits += run_delay.describe(sampler, [(t.posted, t.first_event) for t in result.turns
                                                     if t.posted >= result.start], "POST -> first event")
        return result
    headers = bearer() if path_of in (turn_path, mandated_web_path) else {}

    async def run() -> LoadResult:
        start = time.perf_counter() + warmup
        result = LoadResult(seconds=seconds, start=start)
        probes = [asyncio.ensure_future(_loop_lag(start, start + seconds, result.loop_lag_ms)),
                  asyncio.ensure_future(_healthz(base_url, start, start + seconds, result.healthz_ms))]
        await asyncio.gather(*(_caller(base_url, headers, start, start + seconds, result, path_of)
                               for _ in range(callers)))
        await asyncio.gather(*probes)
        return result

    return asyncio.run(run())


# --- the bare chain -----------------------------------------------------------------------------
def bare_workers(stack: Stack, tools: int = 1, nice: int = 0) -> list[SimpleExecutor]:
    """The baseline's workers: the same pools as `turnstream dev`'s two (gevent x50, threads x2);
    `tools` gevent processes on the first queue, as the tools-worker sweep starts for turnstream.
    `nice`: 0 under the bare chain (stock Celery: no web tier to give way to, and its 32 driving
    threads in this process would otherwise take the cores from it); turnstream's worker nice
    under bare_web.py, whose floor is then that of the same design (shared.nice)."""
    env = processes.child_env({**stack.env, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{Path(__file__).parent}",
                               "BARE_WORKER_NICE": str(nice)})
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    specs = [(BARE_QUEUES[0], "gevent", 50, i) for i in range(tools)] + [(BARE_QUEUES[1], "threads", 2, 0)]
    started = []
    for queue, pool, concurrency, i in specs:
        command = [sys.executable, "-m", "celery", "-A", "noop_app", "worker", "-P", pool, "-c", str(concurrency),
                   "-n", f"{queue}{i}@%h", "-Q", queue, "--without-mingle", "--without-gossip", "-l", "warning"]
        started.append(SimpleExecutor(command, cwd=str(Path(__file__).parent), envvars=env,
                                      stdout=open(stack.log_dir / f"{queue}.log", "ab"), stderr=-2).start())
    processes.wait_for_worker(stack.env, count=len(specs))
    return started


def bare_web_server(stack: Stack, workers: int = 1) -> HTTPExecutor:
    """bench/bare_web.py under turnstream's own gunicorn config, on a free port."""
    port = processes.free_port()
    env = processes.child_env({**stack.env, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{Path(__file__).parent}"})
    command = [sys.executable, "-m", "gunicorn", "-c", str(REPO_ROOT / "deploy" / "gunicorn.conf.py"),
               "-b", f"127.0.0.1:{port}", "-w", str(workers), "bare_web:app"]
    return HTTPExecutor(command, url=f"http://127.0.0.1:{port}/healthz", method="GET", cwd=str(Path(__file__).parent),
                        envvars=env, timeout=60, stdout=open(stack.log_dir / "bare_web.log", "ab"), stderr=-2).start()


def gunicorn_workers(server: HTTPExecutor) -> list[int]:
    return [c.pid for c in psutil.Process(server.process.pid).children()]


def bare_app(stack: Stack):
    import noop_app

    noop_app.app.conf.update(broker_url=stack.env["BROKER_REDIS_URL"], result_backend=stack.env["BROKER_REDIS_URL"],
                             task_default_queue=BARE_QUEUES[0])
    return noop_app.app


def bare_chain(app, i: int):
    from celery import chain

    return chain(*(app.signature("noop.step", queue=BARE_QUEUES[n % 2]) for n in range(4)))({"i": i})


def drive_bare(app, callers: int, seconds: float, warmup: float = 3.0) -> LoadResult:
    start = time.perf_counter() + warmup
    result = LoadResult(seconds=seconds, start=start)
    stop = start + seconds
    lock = threading.Lock()

    def caller(n: int) -> None:
        i = 0
        while time.perf_counter() < stop:
            posted, posted_wall = time.perf_counter(), time.time()
            payload = bare_chain(app, n * 1_000_000 + i).get(timeout=60)
            done = time.perf_counter()
            first = posted + (payload["first_started"] - posted_wall)  # its first task began
            i += 1
            with lock:
                result.completed += 1
            if start <= done <= stop:
                with lock:
                    result.turns.append(Turn(posted, first, done))

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result


def idle_bare(app, n: int) -> list[float]:
    timings = []
    for i in range(n):
        started = time.perf_counter()
        bare_chain(app, i).get(timeout=30)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


# --- starting turnstream as `turnstream dev` does ------------------------------------------------
class System:
    """turnstream's processes on a running Stack's Redis servers: `tools` tools-worker processes,
    the llm worker, `web` gunicorn workers (the pools and queues `turnstream dev` uses)."""

    def __init__(self, stack: Stack, tools: int = 1, web: int = 1):
        self.stack = stack
        self.executors = []
        for i in range(tools):
            for spec in processes.dev_workers(reasoner="rules"):
                if spec.name == "llm" and i:
                    continue
                name = spec.name if spec.name == "llm" else f"{spec.name}{i}"
                self.executors.append(processes.celery_worker(stack.env, stack.log_dir, name=name, queues=spec.queues,
                                                              pool=spec.pool, concurrency=spec.concurrency).start())
        processes.wait_for_worker(stack.env, count=tools + 1)
        stack.start_web(workers=web)
        self.executors.append(stack.web)

    def pids(self) -> dict[str, list[int]]:
        """Process name -> pids (gunicorn's workers are the master's children)."""
        found: dict[str, list[int]] = defaultdict(list)
        for executor in self.executors:
            proc = psutil.Process(executor.process.pid)
            parts = executor.command_parts
            if "gunicorn" in parts:
                found["web"] += [c.pid for c in proc.children()]
            else:
                name = parts[parts.index("-n") + 1].split("-")[0]
                found["llm worker" if name == "llm" else "tools worker"].append(proc.pid)
        return found

    def stop(self) -> None:
        for executor in reversed(self.executors):
            with suppress(Exception):  # one that already died must not keep the others running
                executor.stop()
        self.stack.web = None


# --- measuring CPU and Redis commands -------------------------------------------------------------
def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def redis_pids(stack: Stack) -> dict[str, list[int]]:
    return {f"redis {store}": [executor.process.pid] for store, executor in stack.redis.items()}


def reset_command_stats(stack: Stack) -> None:
    for store in stack.redis:
        stack.client(store).config_resetstat()


def command_counts(stack: Stack) -> dict[str, int]:
    counts = {}
    for store in stack.redis:
        stats = stack.client(store).info("commandstats")
        counts[store] = sum(v["calls"] for v in stats.values())
    return counts


class CpuMeter:
    def __init__(self, pids: dict[str, list[int]]):
        self.pids = {**pids, "bench client": [os.getpid()]}
        self.before = {name: cpu_seconds(p) for name, p in self.pids.items()}

    def per_turn_ms(self, turns: int) -> dict[str, float]:
        return {name: (cpu_seconds(p) - self.before[name]) * 1000 / max(turns, 1) for name, p in self.pids.items()}


# --- py-spy -------------------------------------------------------------------------------------------
COMPONENTS = [  # (component, substrings of a frame's file), the innermost match wins; order breaks ties
    ("Flower task events", ("celery/events/",)),
    ("result backend", ("celery/backends/", "celery/result.py")),
    ("Prometheus writes", ("prometheus_client/",)),
    ("logs", ("/logging/", "pythonjsonlogger/", "shared/logs.py", "celery/app/trace.py:info")),
    ("progress Lua", ("shared/progress.py",)),
    ("turn record Lua", ("shared/turns.py",)),
    ("guards", ("shared/guards/", "workers/guarding.py")),
    ("MCP + loop thread", ("mcp/", "anyio/", "workers/mcp/", "asyncio/")),
    ("JWT", ("jwt/", "shared/identity.py")),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("SSE rendering + fan-out", ("flask_sse/", "web/stream.py", "web/dispatcher.py", "web/sse.py")),
    ("argsrepr (saferepr)", ("celery/utils/saferepr.py",)),
    ("Celery messaging (kombu)", ("kombu/", "celery/app/amqp.py", "celery/app/base.py", "celery/canvas.py")),
    ("Celery task execution", ("celery/app/trace.py", "celery/worker/", "celery/concurrency/")),
    ("Flask / gunicorn / WSGI", ("flask/", "werkzeug/", "gunicorn/")),
    ("redis-py (other)", ("redis/",)),
]
GENERIC = {"Celery messaging (kombu)", "Celery task execution", "Flask / gunicorn / WSGI", "redis-py (other)"}


def ensure_py_spy() -> str:
    found = Path(sys.executable).parent / "py-spy"
    if not found.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", PY_SPY], check=True)
    return str(found)


def start_profiles(pids: dict[str, list[int]], seconds: float, out: Path) -> list[tuple[str, Path, subprocess.Popen]]:
    spy = ensure_py_spy()
    running = []
    for name, pid_list in pids.items():
        for pid in pid_list:
            path = out / f"{name.replace(' ', '_')}-{pid}.txt"
            command = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50",
                       "--format", "raw", "--output", str(path), "--nonblocking"]
            running.append((name, path, subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                                          stderr=subprocess.DEVNULL)))
    return running


def component_of(stack: str) -> str:
    """The innermost specific component on the stack; else the first generic one in COMPONENTS order
    (so kombu's own Redis calls count as Celery messaging, not as redis-py)."""
    frames = stack.split(";")
    generic = []
    for frame in reversed(frames):  # leaf first
        for rank, (name, needles) in enumerate(COMPONENTS):
            if any(n in frame for n in needles):
                if name not in GENERIC:
                    return name
                generic.append((rank, name))
    return min(generic)[1] if generic else f"other: {package_of(frames[-1])}"


def package_of(frame: str) -> str:
    """The package (or stdlib module) a py-spy frame `function (file:line)` is in."""
    path = frame.rpartition("(")[2].rpartition(":")[0]
    for marker in ("site-packages/", "/python3.11/", str(REPO_ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1].split("/")[0].removesuffix(".py")
    return path.rsplit("/", 1)[-1] or "?"


def read_profiles(running) -> dict[str, Counter]:
    by_process: dict[str, Counter] = defaultdict(Counter)
    for name, path, proc in running:
        proc.wait()
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                by_process[name][component_of(stack)] += int(count)
    return by_process


def print_profile(by_process: dict[str, Counter], cpu_ms: dict[str, float]) -> None:
    print("\nWhere the CPU goes per turn (py-spy samples, shares of each process's CPU):")
    for name, counts in sorted(by_process.items()):
        total = sum(counts.values()) or 1
        print(f"  {name}: {cpu_ms.get(name, 0):.1f} ms/turn")
        for component, n in counts.most_common(12):
            share = n / total
            print(f"    {component:<34} {share * 100:5.1f} %  {share * cpu_ms.get(name, 0):6.2f} ms")


# --- the run ---------------------------------------------------------------------------------------
def p(values: list[float], q: float) -> float:
    return percentile(values, q) if values else float("nan")


def start_system(stack: Stack, tools: int = 1, web: int = 1, attempts: int = 3) -> System:
    """A System that has answered a few turns (MCP sessions and pools warm). On a shared machine a
    free port can be taken between choosing and binding it: then start again."""
    for attempt in range(attempts):
        system = None
        try:
            system = System(stack, tools=tools, web=web)
            if drive_turns(stack.base_url, 4, 2, warmup=0.5).completed:
                return system
        except Exception as exc:  # noqa: BLE001 - retried, then raised below
            print(f"  start failed ({exc}); again", file=sys.stderr)
        if system is not None:
            with suppress(Exception):
                system.stop()
    raise RuntimeError(f"turnstream did not start in {attempts} attempts")


def busy_run(stack: Stack, callers: int, seconds: float, tools: int = 1, web: int = 1,
             profile_dir: Path | None = None) -> tuple[LoadResult, dict, dict]:
    system = start_system(stack, tools=tools, web=web)
    try:
        pids = {**system.pids(), **redis_pids(stack)}
        reset_command_stats(stack)
        meter = CpuMeter(pids)
        profiles = start_profiles({k: v for k, v in pids.items() if not k.startswith("redis")}, seconds + 3,
                                  profile_dir) if profile_dir else None
        result = drive_turns(stack.base_url, callers, seconds, watch=pids)
        cpu = meter.per_turn_ms(result.completed)
        commands = {store: n / max(result.completed, 1) for store, n in command_counts(stack).items()}
        if profiles:
            print_profile(read_profiles(profiles), cpu)
        return result, cpu, commands
    finally:
        system.stop()


def idle_loop(base_url: str, n: int, path_of=turn_path) -> LoadResult:
    """n turns, one at a time, on one keep-alive client."""
    result = LoadResult(seconds=1)

    async def run() -> None:
        async with httpx.AsyncClient(headers=bearer() if path_of is turn_path else {}, timeout=60) as client:
            for _ in range(n):
                result.turns.append(await _one_turn(client, base_url, "cap-idle", path_of))

    asyncio.run(run())
    return result


def idle_turns(stack: Stack, n: int) -> LoadResult:
    system = start_system(stack)
    try:
        return idle_loop(stack.base_url, n)
    finally:
        system.stop()


IDLE_KINDS = ("turnstream", "bare chain", "bare web", "durable", "fewest", "overlap", "mandated")


def idle_interleaved(stack: Stack, n: int, block: int = 10, warm: int = 3) -> dict[str, list[float]]:
    """Single idle turns of turnstream and of every baseline, in blocks: `warm` unmeasured then
    `block` measured turns of one kind, then the next kind, round after round until each kind has
    n, with all of them running at once (an idle process costs 0.1-0.4 % of a core). Each p50
    then comes from the same minutes: measured one kind after the other, minutes apart, a host
    whose speed drifts by 20-30 % moved the ratio more than most changes do (turnstream measured
    alone 24.8 ms, then 30.7 ms in these blocks, in one run; the same turns alone, with the
    baselines up and idle or not, differ by less than that from one minute to the next). Blocks,
    not one turn of each kind in turn, so that a kind's turns follow one another, as an idle
    turn's do in bench/turn_latency.py. Milliseconds from POST (apply_async for the chain) to
    `done` (the result)."""
    system = start_system(stack)
    workers, web = bare_workers(stack), None
    try:
        web = bare_web_server(stack)
        app = bare_app(stack)
        timings: dict[str, list[float]] = {kind: [] for kind in IDLE_KINDS}

        def one_chain(i: int) -> float:
            started = time.perf_counter()
            bare_chain(app, i).get(timeout=30)
            return (time.perf_counter() - started) * 1000

        async def run() -> None:
            async with httpx.AsyncClient(headers=bearer(), timeout=60) as ours, \
                    httpx.AsyncClient(timeout=60) as bare:
                http = {"turnstream": (ours, stack.base_url, turn_path),
                        "bare web": (bare, base_url(web), bare_web_path),
                        "durable": (bare, base_url(web), durable_web_path),
                        "fewest": (bare, base_url(web), fewest_web_path),
                        "overlap": (bare, base_url(web), overlap_web_path),
                        "mandated": (ours, base_url(web), mandated_web_path)}
                for r in range(-(-n // block)):
                    for kind in IDLE_KINDS:
                        for i in range(warm + block):
                            if kind == "bare chain":
                                ms = await asyncio.to_thread(one_chain, r * 1000 + i)  # timed in its thread
                            else:
                                client, url, path_of = http[kind]
                                turn = await _one_turn(client, url, "cap-idle", path_of)
                                ms = (turn.done - turn.posted) * 1000
                            if i >= warm:
                                timings[kind].append(ms)

        asyncio.run(run())
        return timings
    finally:
        if web is not None:
            web.stop()
        for w in workers:
            w.stop()
        system.stop()


@dataclass
class Baselines:
    """Everything measured on the bare chain and on bench/bare_web.py, same run, same Redis servers."""
    chain: LoadResult
    chain_idle_ms: list[float]
    chain_cpu: dict
    chain_commands: dict
    web: LoadResult  # bare_web.py, busy
    web_idle: LoadResult
    web_cpu: dict
    mandated: LoadResult  # bare_web.py?durable=mandated, busy: the floor with what the issues require
    sweeps: dict = field(default_factory=dict)  # ("tools" | "web", n) -> throughput


def bare_run(stack: Stack, callers: int, seconds: float, idle: int, sweep: bool) -> Baselines:
    workers = bare_workers(stack)
    try:
        app = bare_app(stack)
        idle_bare(app, 10)
        idle_ms = idle_bare(app, idle)
        pids = {"bare workers": [w.process.pid for w in workers], **redis_pids(stack)}
        reset_command_stats(stack)
        meter = CpuMeter(pids)
        result = drive_bare(app, callers, seconds)
        cpu = meter.per_turn_ms(result.completed)
        commands = {store: n / max(result.completed, 1) for store, n in command_counts(stack).items()}
    finally:
        for w in workers:
            w.stop()
    workers = bare_workers(stack, nice=get_settings().worker_nice)
    try:
        web = bare_web_server(stack)
        try:
            idle_loop(base_url(web), 10, bare_web_path)
            web_idle = idle_loop(base_url(web), idle, bare_web_path)
            watched = {"bare web": gunicorn_workers(web), "bare workers": [w.process.pid for w in workers],
                       **redis_pids(stack)}
            meter = CpuMeter(watched)
            web_busy = drive_turns(base_url(web), callers, seconds, path_of=bare_web_path, watch=watched)
            web_cpu = meter.per_turn_ms(web_busy.completed)
            mandated = drive_turns(base_url(web), callers, seconds, path_of=mandated_web_path, watch=watched)
        finally:
            web.stop()
    finally:
        for w in workers:
            w.stop()
    baselines = Baselines(result, idle_ms, cpu, commands, web_busy, web_idle, web_cpu, mandated)
    if sweep:
        bare_sweeps(stack, callers, seconds, baselines.sweeps)
    return baselines


def throughput_pair(stack: Stack, callers: int, seconds: float, turnstream_first: bool) -> float:
    """One more busy run of each, in the order given (alternate it: a host that drifts over the
    run then favours neither): turnstream's throughput over the bare chain's."""
    def bare() -> float:
        workers = bare_workers(stack)
        try:
            return drive_bare(bare_app(stack), callers, seconds).throughput
        finally:
            for w in workers:
                w.stop()

    def turnstream() -> float:
        return busy_run(stack, callers, seconds)[0].throughput

    if turnstream_first:
        turns = turnstream()
        chains = bare()
    else:
        chains = bare()
        turns = turnstream()
    return turns / max(chains, 1e-9)


def base_url(server: HTTPExecutor) -> str:
    return f"http://{server.url.netloc}"


def bare_sweeps(stack: Stack, callers: int, seconds: float, sweeps: dict) -> None:
    """The same 1 -> 2 -> 4 sweeps on the baselines: gevent worker processes under the bare chain,
    gunicorn workers under bare_web.py (with 2 gevent workers, as turnstream's web sweep has)."""
    app = bare_app(stack)
    for kind in ("tools", "web"):
        for n in (1, 2, 4):
            workers = bare_workers(stack, tools=n if kind == "tools" else 2,
                                   nice=0 if kind == "tools" else get_settings().worker_nice)
            try:
                if kind == "tools":
                    sweeps[(kind, n)] = drive_bare(app, callers, seconds).throughput
                else:
                    web = bare_web_server(stack, workers=n)
                    try:
                        sweeps[(kind, n)] = drive_turns(base_url(web), callers, seconds,
                                                        path_of=bare_web_path).throughput
                    finally:
                        web.stop()
            finally:
                for w in workers:
                    w.stop()
            print(f"  baseline sweep {kind} x{n}: {sweeps[(kind, n)]:.1f} per s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window of each busy run")
    parser.add_argument("--idle", type=int, default=50, help="sequential turns for the idle figures")
    parser.add_argument("--no-sweep", action="store_true", help="skip the 1 -> 2 -> 4 process sweeps")
    parser.add_argument("--rounds", type=int, default=3,
                        help="busy runs of each, alternated (bare chain, turnstream, ...): the throughput ratio "
                             "is their median, so a noisy minute on a shared host moves one round, not the claim")
    parser.add_argument("--profile", action="store_true", help="py-spy the busy processes (installs py-spy)")
    parser.add_argument("--events-cost", action="store_true",
                        help="one more busy run with Flower's task events off (TURNSTREAM_TASK_EVENTS=0)")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores, "
          f"{args.callers} callers, {args.seconds:.0f} s per busy run, workers at nice "
          f"{get_settings().worker_nice} (bare chain 0)", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), TURNSTREAM_TURN_RATE_LIMIT="100000000/minute", TURNSTREAM_REASONER="rules",
                      TURNSTREAM_TOOL_LATENCY_MS="0", TURNSTREAM_LOG_FORMAT="json")
        try:
            stack.start_redis()
            stack.apply_env()
            base = bare_run(stack, args.callers, args.seconds, args.idle, sweep=not args.no_sweep)
            bare, bare_idle, bare_cpu, bare_cmds = base.chain, base.chain_idle_ms, base.chain_cpu, base.chain_commands
            print(f"bare chain: {bare.throughput:.1f} chains/s busy; idle p50 {p(bare_idle, 50):.1f} ms; "
                  f"bare web: {base.web.throughput:.1f} turns/s busy ({base.web.errors} errors)", flush=True)
            idle = idle_turns(stack, args.idle)
            interleaved = idle_interleaved(stack, args.idle)
            busy, cpu, cmds = busy_run(stack, args.callers, args.seconds,
                                       profile_dir=Path(tmp) if args.profile else None)
            print(f"turnstream: {busy.throughput:.1f} turns/s busy ({busy.errors} errors)", flush=True)
            events_off = None
            if args.events_cost:
                stack.env["TURNSTREAM_TASK_EVENTS"] = "0"
                events_off, off_cpu, off_cmds = busy_run(stack, args.callers, args.seconds)
                stack.env.pop("TURNSTREAM_TASK_EVENTS")
                print(f"task events off: {events_off.throughput:.1f} turns/s", flush=True)
            ratios = [busy.throughput / bare.throughput]
            for _ in range(args.rounds - 1):
                ratios.append(throughput_pair(stack, args.callers, args.seconds, turnstream_first=len(ratios) % 2 == 1))
                print(f"  round {len(ratios)}: ratio {ratios[-1]:.2f}", flush=True)
            sweeps = {}
            if not args.no_sweep:
                for kind in ("tools", "web"):
                    for n in (1, 2, 4):
                        counts = {"tools": n, "web": 1} if kind == "tools" else {"tools": 2, "web": n}
                        run, _, _ = busy_run(stack, args.callers, args.seconds, **counts)
                        sweeps[(kind, n)] = run.throughput
                        print(f"  sweep {kind} x{n}: {run.throughput:.1f} turns/s", flush=True)
        finally:
            stack.stop()

    idle_done = idle.ms("done")
    print("\n=== capacity (same run, same broker, same worker processes)")
    print(f"throughput at {args.callers} callers: turnstream {busy.throughput:.1f} turns/s, "
          f"bare chain {bare.throughput:.1f} chains/s -> ratio {busy.throughput / bare.throughput:.2f}; "
          f"over {len(ratios)} alternated rounds {', '.join(f'{r:.2f}' for r in ratios)}: median "
          f"{statistics.median(ratios):.2f} (target >= 0.60)")
    first, done = busy.ms("first_event"), busy.ms("done")
    print(f"POST -> first SSE event, busy: p50 {p(first, 50):.1f} ms, p99 {p(first, 99):.1f} ms (target p99 <= 50)")
    answered = busy.ms("answered")
    opened = [f - a for f, a in zip(first, answered)]
    print(f"  of which POST -> 202: p50 {p(answered, 50):.1f} ms, p99 {p(answered, 99):.1f} ms; "
          f"202 -> first event (the stream's open): p50 {p(opened, 50):.1f} ms, p99 {p(opened, 99):.1f} ms")
    bare_first = bare.ms("first_event")
    print(f"  bare chain under its own load, apply_async -> its first task running: p50 {p(bare_first, 50):.1f} ms, "
          f"p99 {p(bare_first, 99):.1f} ms")
    idle_first = idle.ms("first_event")
    lag = busy.loop_lag_ms
    print(f"  the callers' own event loop woke late by p50 {p(lag, 50):.1f} ms, p99 {p(lag, 99):.1f} ms "
          f"(included in every busy latency above)")
    health = busy.healthz_ms
    print(f"  GET /healthz (no Redis, no auth) on the same web process, same load: p50 {p(health, 50):.1f} ms, "
          f"p99 {p(health, 99):.1f} ms (its scheduling alone)")
    web_first, web_answered = base.web.ms("first_event"), base.web.ms("answered")
    print(f"  bare web (bench/bare_web.py) under its own load: POST -> first SSE event p50 {p(web_first, 50):.1f} ms, "
          f"p99 {p(web_first, 99):.1f} ms (POST -> 202 p99 {p(web_answered, 99):.1f} ms), "
          f"at {base.web.throughput:.1f} turns/s")
    print("where the busy first event's time went (bench/run_delay.py: each process's run and run-queue wait "
          "inside the span), turnstream:")
    print("\n".join(busy.waits))
    print("  ... and the bare web:")
    print("\n".join(base.web.waits))
    m_first, m_answered = base.mandated.ms("first_event"), base.mandated.ms("answered")
    print(f"  ... and the bare web with what the issues require of a turn (?durable=mandated: a checked token; "
          f"rate limit, session owner and record in one round trip; durable steps), under its own load: "
          f"POST -> first SSE event p50 {p(m_first, 50):.1f} ms, p99 {p(m_first, 99):.1f} ms "
          f"(POST -> 202 p99 {p(m_answered, 99):.1f} ms), at {base.mandated.throughput:.1f} turns/s:")
    print("\n".join(base.mandated.waits))
    print(f"POST -> first SSE event, idle: p50 {p(idle_first, 50):.1f} ms, p99 {p(idle_first, 99):.1f} ms "
          f"(target <= 20)")
    print(f"POST -> done, busy: p50 {p(done, 50):.1f} ms, p99 {p(done, 99):.1f} ms")
    alone = {kind: p(ms, 50) for kind, ms in interleaved.items()}
    chain_alone = alone["bare chain"]
    print(f"single idle turn, p50 of {args.idle} turns of each kind, in alternated blocks of 10: turnstream "
          f"{alone['turnstream']:.1f} ms vs bare chain {chain_alone:.1f} ms -> "
          f"{alone['turnstream'] / chain_alone:.2f}x (target <= 1.5x); measured apart, minutes earlier: "
          f"{p(idle_done, 50):.1f} ms vs {p(bare_idle, 50):.1f} ms")
    print(f"  bare web idle turn: {alone['bare web']:.1f} ms -> {alone['bare web'] / chain_alone:.2f}x the bare "
          f"chain (HTTP + event log + SSE alone); turnstream / bare web {alone['turnstream'] / alone['bare web']:.2f}x; "
          f"its first event idle (measured apart) p50 {p(base.web_idle.ms('first_event'), 50):.1f} ms, "
          f"p99 {p(base.web_idle.ms('first_event'), 99):.1f} ms")
    print(f"  bare web with a durable step's round trips (bare_web.py?durable=1: 7 per task): {alone['durable']:.1f} ms "
          f"-> {alone['durable'] / chain_alone:.2f}x the bare chain; turnstream / that "
          f"{alone['turnstream'] / alone['durable']:.2f}x")
    print(f"  the same writes in the fewest round trips a step allows (?durable=fewest: 4 per task): "
          f"{alone['fewest']:.1f} ms -> {alone['fewest'] / chain_alone:.2f}x the bare chain; turnstream / that "
          f"{alone['turnstream'] / alone['fewest']:.2f}x")
    print(f"  the same, the broker's and the progress store's round trips in flight together (?durable=overlap: "
          f"2 waits per task): {alone['overlap']:.1f} ms -> {alone['overlap'] / chain_alone:.2f}x the bare chain")
    print(f"  ... plus what other issues require of a turn at its least (a checked token, rate limit and session "
          f"owner with the record, the tool call's two guards; ?durable=mandated): {alone['mandated']:.1f} ms -> "
          f"{alone['mandated'] / chain_alone:.2f}x the bare chain; turnstream / that "
          f"{alone['turnstream'] / alone['mandated']:.2f}x")
    print(f"throughput, bare web: {base.web.throughput:.1f} turns/s = "
          f"{base.web.throughput / bare.throughput:.2f} of the bare chain; "
          f"turnstream / bare web {busy.throughput / max(base.web.throughput, 1e-9):.2f}")
    print("CPU per turn (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    turn_cpu, chain_cpu = sum(cpu.values()), sum(bare_cpu.values())
    print(f"  every process, client included: {turn_cpu:.1f} ms per turn, {chain_cpu:.1f} ms per bare chain -> "
          f"{chain_cpu / turn_cpu:.2f} (both loops keep the cores busy: {turn_cpu * busy.throughput / 1000:.2f} and "
          f"{chain_cpu * bare.throughput / 1000:.2f} cores), so this is the throughput ratio the cores allow")
    print("CPU per bare chain (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in bare_cpu.items()))
    print("CPU per bare web turn (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in base.web_cpu.items()))
    print("Redis commands per turn: " + ", ".join(f"{k} {v:.0f}" for k, v in cmds.items()))
    print("Redis commands per bare chain: " + ", ".join(f"{k} {v:.0f}" for k, v in bare_cmds.items()))
    if events_off is not None:
        print(f"task events off: {events_off.throughput:.1f} turns/s -> on/off {busy.throughput / events_off.throughput:.2f}; "
              f"broker commands per turn {off_cmds['broker']:.0f} (on: {cmds['broker']:.0f}); CPU per turn (ms): "
              + ", ".join(f"{k} {v:.1f}" for k, v in off_cpu.items()))
    for kind in ("tools", "web"):
        if (kind, 1) in sweeps:
            one = sweeps[(kind, 1)] or 1
            label = "tools-worker processes" if kind == "tools" else "gunicorn workers (2 tools workers)"
            print(f"scaling, {label}: " + ", ".join(f"x{n} {sweeps[(kind, n)] / one:.2f}" for n in (1, 2, 4)))
            bare_one = base.sweeps[(kind, 1)] or 1
            label = "the bare chain's gevent workers" if kind == "tools" else "bare web's gunicorn workers"
            print(f"  baseline, {label}: " + ", ".join(f"x{n} {base.sweeps[(kind, n)] / bare_one:.2f}"
                                                     for n in (1, 2, 4)))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
