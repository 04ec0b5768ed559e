"""Durable turns under fire: 100 turns, each opening a ticket and calling two read-only tools
(weather, calculator), while worker processes are killed with SIGKILL at random moments and the
progress Redis is killed for 5 s once. The same script runs first without faults (the baseline,
measured in the same run) and then with them.

It prints, for the faulty run against the baseline:
- turns done / accepted (target 100 %);
- tickets opened per turn (target exactly 1 for every turn);
- reasoner calls per turn (target <= 1.1x the baseline);
- events in each turn's final log: missing and duplicated against the baseline (target 0 and 0;
  answer text is compared as the concatenation of its `token` events, which coalesce differently);
- seconds from a worker kill to each turn it held moving again (target p99 <= 60 s).

Workers: one prefork worker (2 children) and two threads workers, all queues, the default
visibility timeout (600 s): a kill is recovered by the liveness sweep, not by the broker.
A killed main process is restarted 1 s later, as a supervisor would.

    .venv/bin/python bench/durability.py [--turns 100] [--kills 12] [--seed 14]
"""

import argparse
import json
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import percentile  # noqa: E402
from tests.sse import bearer, post_prompt  # noqa: E402
from tests.stack import Stack  # noqa: E402

CITIES = ("Paris", "London", "Tokyo", "Berlin", "Rome", "Madrid", "Sydney", "New York")
FINAL = ("done", "failed", "cancelled")
ENV = {"TURNSTREAM_TOOL_LATENCY_MS": "1000", "TURNSTREAM_TURN_RATE_LIMIT": "100000/minute",
       "TURNSTREAM_BREAKER_RESET_S": "1"}


def admin() -> dict:
    return bearer(user="alice", roles=("admin",))


def prompt(i: int) -> str:
    return f"Open a ticket: what is the weather in {CITIES[i % len(CITIES)]}, and calculate {i} * 7?"


class Run:
    """One run of the script on a fresh stack."""

    def __init__(self, name: str, turns: int, faults: bool, kills: int, rng: random.Random):
        self.name, self.turns, self.faults, self.kills, self.rng = name, turns, faults, kills, rng
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"durability-{name}-"))
        self.stack = Stack(self.base_dir, **ENV)
        self.bodies: list[dict] = []
        self.kill_log: list[dict] = []
        self.recoveries: list[float] = []

    # --- processes --------------------------------------------------------------------------
    WORKERS = (("prefork", {"pool": "prefork", "concurrency": 2}), ("threads-a", {}), ("threads-b", {}))

    def start(self) -> None:
        self.stack.start_redis()
        self.stack.apply_env()  # this process signs the tokens and reads the stores
        for name, options in self.WORKERS:
            self.stack.start_worker(name=name, **options)
        self.stack.start_web()

    def victims(self) -> list[tuple[str, int, int]]:
        """(worker name, index in stack.workers, pid) of every process that runs steps: the
        threads workers' own processes, the prefork worker's children."""
        found = []
        for index, worker in enumerate(self.stack.workers):
            if not worker.running():
                continue
            proc = psutil.Process(worker.process.pid)
            name = self.WORKERS[index][0]
            # A prefork worker's pool processes run celery; the other children are MCP tool servers.
            pool = [c for c in proc.children() if "celery" in " ".join(_cmdline(c))]
            found += [(f"{name}-child", index, c.pid) for c in pool] if pool else [(name, index, proc.pid)]
        return found

    def held_by(self, pid: int) -> list[tuple[str, str]]:
        """The turns whose current step, or one of whose tool calls, process `pid` runs."""
        broker = self.stack.client("broker")
        held = set()
        for key in broker.scan_iter("agent:worker-turns:*"):
            if f"-{pid}-" in key:
                held |= {tuple(m.split(":")[:2]) for m in broker.smembers(key)}
        return sorted(held)

    def kill_one(self) -> None:
        name, index, pid = self.rng.choice(self.victims())
        held = self.held_by(pid)
        started = time.time()
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            return  # it died on its own meanwhile: not a kill of ours
        self.kill_log.append({"victim": name, "pid": pid, "held": len(held), "at": started})
        threading.Thread(target=self.watch_recovery, args=(held, pid, started), daemon=True).start()
        worker = self.stack.workers[index]
        if not name.endswith("-child"):
            time.sleep(1)
            try:
                worker.stop()  # collects the dead process
            except Exception:  # noqa: BLE001 - it is dead already
                pass
            self.stack.workers[index] = worker.start()

    def watch_recovery(self, held: list[tuple[str, str]], pid: int, killed_at: float) -> None:
        """Seconds until each turn the victim held moves again (another process runs it, or it ended)."""
        broker = self.stack.client("broker")
        waiting = set(held)
        while waiting and time.time() - killed_at < 600:
            for session_id, message_id in list(waiting):
                record = broker.hmget(f"agent:turn:{session_id}:{message_id}", "status", "runner", "updated_at")
                status, runner, updated = record
                moved = status in FINAL or (updated and float(updated) > killed_at and f"-{pid}-" not in (runner or ""))
                if moved:
                    self.recoveries.append(time.time() - killed_at)
                    waiting.discard((session_id, message_id))
            time.sleep(0.1)

    def outage(self) -> None:
        self.stack.redis["progress"].kill(sig=9)
        time.sleep(5)
        self.stack.restart_redis("progress")

    # --- the run -------------------------------------------------------------------------------
    def run(self) -> dict:
        self.start()
        started = time.time()
        faults = threading.Thread(target=self.inject, daemon=True) if self.faults else None
        if faults:
            faults.start()
        with ThreadPoolExecutor(10) as pool:
            posted = list(pool.map(lambda i: self.post(i, started), range(self.turns)))
        self.bodies = [r.json() for r in posted if r is not None and r.status_code == 202]
        records = self.wait_final(timeout=900)
        if faults:
            faults.join(timeout=120)
        elapsed = time.time() - started
        broker = self.stack.client("broker")
        drain = time.time()
        while broker.llen("agent:outbox") and time.time() - drain < 120:  # published once progress is back
            time.sleep(0.5)
        return {"records": records, "logs": [self.log(b) for b in self.bodies], "tickets": self.tickets(),
                "reasoner_calls": self.reasoner_calls(), "elapsed": elapsed}

    def post(self, i: int, started: float) -> httpx.Response | None:
        time.sleep(max(0.0, started + i * 0.15 - time.time()))  # a steady stream over ~15 s: kills land on every step
        try:
            return post_prompt(self.stack.base_url, f"dur{i}", prompt(i), headers=admin())
        except httpx.HTTPError:
            return None

    def inject(self) -> None:
        """`kills` SIGKILLs at random moments, and one 5 s progress outage in the middle of them."""
        outage_after = self.kills // 2
        for n in range(self.kills):
            time.sleep(self.rng.uniform(1.0, 4.0))
            if n == outage_after:
                self.outage()
            self.kill_one()

    def wait_final(self, timeout: float) -> list[dict]:
        deadline = time.time() + timeout
        with httpx.Client(timeout=10) as client:
            while True:
                records = [client.get(self.stack.base_url + b["status_url"], headers=admin()).json() for b in self.bodies]
                if all(r.get("status") in FINAL for r in records) or time.time() > deadline:
                    return records
                time.sleep(1)

    def log(self, body: dict) -> list[tuple[str, dict]]:
        from shared import keys

        entries = self.stack.client("progress").xrange(keys.progress_log(body["session_id"], body["message_id"]))
        return [(fields["type"], json.loads(fields["data"])) for _, fields in entries]

    def tickets(self) -> Counter:
        path = self.base_dir / "tickets.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return Counter("/".join(json.loads(line).get("idempotency_key", "?/?").split("/")[:2]) for line in lines)

    def reasoner_calls(self) -> float:
        from prometheus_client import CollectorRegistry, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.base_dir / "metrics"))
        return sum(sample.value for metric in registry.collect() if metric.name == "turnstream_reasoner_calls"
                   for sample in metric.samples if sample.name.endswith("_total"))

    def stop(self) -> None:
        self.stack.stop()


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # exited (or a zombie) since it was listed
        return []


def signature(kind: str, data: dict) -> tuple:
    """What identifies an event across runs (timings and ids differ)."""
    return (kind, data.get("step"), data.get("status"), data.get("round"), data.get("call_id"), data.get("tool"))


def compare_logs(baseline: list, faulty: list) -> tuple[int, int, int]:
    """(missing, duplicated, answers whose token text differs) over every turn, turn i against turn i."""
    missing = duplicated = text_mismatch = 0
    for base, got in zip(baseline, faulty):
        expected = Counter(signature(k, d) for k, d in base if k != "token")
        seen = Counter(signature(k, d) for k, d in got if k != "token")
        missing += sum((expected - seen).values())
        duplicated += sum(count - 1 for count in seen.values() if count > 1)
        answer = next((d["answer"] for k, d in got if k == "done"), None)
        if answer is None or "".join(d["text"] for k, d in got if k == "token") != answer:
            text_mismatch += 1
    return missing, duplicated, text_mismatch


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the stack on `kill` too
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    results = {}
    for name, faults in (("baseline", False), ("faults", True)):
        run = Run(name, args.turns, faults, args.kills, random.Random(args.seed))
        try:
            results[name] = run.run()
            results[name]["kills"] = run.kill_log
            results[name]["recoveries"] = run.recoveries
            results[name]["accepted"] = len(run.bodies)
        finally:
            run.stop()
        print(f"{name}: {results[name]['accepted']} accepted, {results[name]['elapsed']:.0f} s", flush=True)

    base, hit = results["baseline"], results["faults"]
    done = sum(r.get("status") == "done" for r in hit["records"])
    per_turn = Counter(hit["tickets"].values())
    untouched = args.turns - len(hit["tickets"])
    missing, duplicated, text_mismatch = compare_logs(base["logs"], hit["logs"])
    calls_base, calls_hit = base["reasoner_calls"] / base["accepted"], hit["reasoner_calls"] / hit["accepted"]
    recoveries = hit["recoveries"]
    print(f"kills: {len(hit['kills'])} ({Counter(k['victim'].split('-')[0] for k in hit['kills'])}), "
          f"turns held at the kill: {sum(k['held'] for k in hit['kills'])}; progress Redis down 5 s once")
    print(f"turns done / accepted:        {done}/{hit['accepted']} = {done / hit['accepted']:.1%}   (baseline "
          f"{sum(r.get('status') == 'done' for r in base['records'])}/{base['accepted']})")
    print(f"tickets per turn:             {dict(sorted(per_turn.items()))} (turns with none: {untouched})")
    print(f"reasoner calls per turn:      {calls_hit:.3f} vs baseline {calls_base:.3f} = {calls_hit / calls_base:.3f}x")
    print(f"events vs baseline:           missing {missing}, duplicated {duplicated}, "
          f"answers whose token text differs {text_mismatch}")
    if recoveries:
        print(f"kill -> turn moving again:    n={len(recoveries)} p50={percentile(recoveries, 50):.1f} s "
              f"p99={percentile(recoveries, 99):.1f} s max={max(recoveries):.1f} s")
    else:
        print("kill -> turn moving again:    no kill hit a turn")


if __name__ == "__main__":
    main()
