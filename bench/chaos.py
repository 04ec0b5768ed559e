"""50 concurrent turns while each Redis store in turn is killed (SIGKILL) and restarted.

For each scenario it prints turns accepted (202), refused (503), completed, lost (accepted
but never finished) and duplicated final answers (more than one terminal event in a turn's
log). The "none" scenario is the baseline measured in the same run. Target: lost 0,
duplicates 0 in every scenario.

    .venv/bin/python bench/chaos.py [--turns 50] [--outage 2.0]
"""

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.defaults import STORES  # noqa: E402
from tests.sse import bearer, post_prompt  # noqa: E402
from tests.stack import Stack  # noqa: E402

PROMPT = "What is the weather in Paris, London and Tokyo?"
FINAL = ("done", "failed", "cancelled")
ENV = {"TURNSTREAM_TOOL_LATENCY_MS": "300", "TURNSTREAM_VISIBILITY_TIMEOUT_S": "10",
       "TURNSTREAM_TASK_SOFT_TIME_LIMIT_S": "6", "TURNSTREAM_TASK_TIME_LIMIT_S": "8",
       "TURNSTREAM_UNACKED_RESTORE_INTERVAL_S": "1", "TURNSTREAM_BREAKER_RESET_S": "1",
       "TURNSTREAM_TURN_RATE_LIMIT": "100000/minute", "TURNSTREAM_REDELIVERY_SWEEP_S": "1"}


def run_scenario(stack: Stack, store: str | None, turns: int, outage_s: float) -> dict:
    base = stack.base_url
    tag = store.replace("_", "") if store else "none"

    def post(i: int) -> httpx.Response | None:
        time.sleep(i * 0.04)  # spread the posts over ~2 s so the outage falls among them
        try:
            return post_prompt(base, f"{tag}{i}", PROMPT, headers=bearer(f"u{i}", "bench"))
        except httpx.HTTPError:
            return None

    with ThreadPoolExecutor(turns) as pool:
        futures = [pool.submit(post, i) for i in range(turns)]
        if store:
            time.sleep(turns * 0.02)
            stack.redis[store].kill(sig=9)
            time.sleep(outage_s)
            stack.restart_redis(store)
        responses = [f.result() for f in futures]
    accepted = [(i, r.json()) for i, r in enumerate(responses) if r is not None and r.status_code == 202]
    refused = sum(1 for r in responses if r is not None and r.status_code == 503)

    records = wait_final(base, accepted)
    completed = sum(1 for r in records if r.get("status") == "done")
    duplicates = 0
    progress = stack.client("progress")
    for _, body in accepted:
        log = progress.xrange(f"agent:progress-log:{{{body['session_id']}:{body['message_id']}}}")
        terminal = sum(1 for _, fields in log if fields["type"] in ("done", "error", "cancelled"))
        duplicates += max(0, terminal - 1)
    return {"scenario": store or "none (baseline)", "posted": turns, "accepted": len(accepted), "refused": refused,
            "completed": completed, "lost": len(accepted) - completed, "duplicates": duplicates}


def wait_final(base: str, accepted: list[tuple[int, dict]], timeout: float = 120.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    records: list[dict] = []
    while time.monotonic() < deadline:
        records = [httpx.get(base + body["status_url"], headers=bearer(f"u{i}", "bench"), timeout=10).json()
                   for i, body in accepted]
        if all(r.get("status") in FINAL for r in records):
            break
        time.sleep(1.0)
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--outage", type=float, default=2.0, help="seconds each store stays down")
    args = parser.parse_args()
    stack = Stack(Path(tempfile.mkdtemp(prefix="turnstream-chaos-")), **ENV)
    results = []
    try:
        stack.start_redis()
        stack.apply_env()
        stack.start_worker()
        stack.start_web()
        for store in (None, *STORES):
            results.append(run_scenario(stack, store, args.turns, args.outage))
            print(json.dumps(results[-1]), flush=True)
    finally:
        stack.stop()
    print(f"\n{'scenario':<18}{'accepted':>9}{'refused':>8}{'completed':>10}{'lost':>6}{'dupes':>6}")
    for r in results:
        print(f"{r['scenario']:<18}{r['accepted']:>9}{r['refused']:>8}{r['completed']:>10}{r['lost']:>6}"
              f"{r['duplicates']:>6}")
    baseline = results[0]["completed"] or 1
    print("\ncompleted / accepted, against the no-fault baseline: "
          + ", ".join(f"{r['scenario']} {r['completed'] / max(r['accepted'], 1):.2f}" for r in results)
          + f" (baseline completed {baseline})")
    return 0 if all(r["lost"] == 0 and r["duplicates"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
