"""Turn latency: POST to `done` at an SSE client, against a bare Celery chain of four no-op tasks.

Both run in the same run on the same broker, with thread-pool workers of the same size and
zero-latency tools, so the ratio is what turnstream's own machinery (validation, status
records, progress log + pub/sub, SSE) costs on top of Celery itself.

    python bench/turn_latency.py [--turns 200]
"""

import argparse
import tempfile
import time
from pathlib import Path

from _common import summary  # noqa: E402  (puts the repo on sys.path)
import httpx
from celery import chain
from mirakuru import SimpleExecutor

from shared.cli.processes import REPO_ROOT, child_env, wait_for_worker
from tests.sse import bearer, post_prompt, read_stream
from tests.stack import Stack


def time_turns(stack: Stack, turns: int) -> list[float]:
    timings = []
    with httpx.Client(headers=bearer(), timeout=30) as client:  # one keep-alive client, as a browser has
        for i in range(turns):
            started = time.perf_counter()
            body = post_prompt(stack.base_url, "bench", "calculate 6 * 7", client=client).json()
            events = read_stream(stack.base_url, body["stream_url"], client=client)
            assert events[-1].type == "done", events[-1]
            timings.append((time.perf_counter() - started) * 1000)
    return timings


def time_bare_chains(stack: Stack, turns: int) -> list[float]:
    import noop_app

    worker = SimpleExecutor(
        [*_celery(), "-A", "noop_app", "worker", "-P", "threads", "-c", "8", "-n", "noop@%h", "-Q", "noop",
         "--without-mingle", "--without-gossip", "-l", "warning"],
        cwd=str(Path(__file__).parent), envvars=child_env({**stack.env, "PYTHONPATH": str(REPO_ROOT)}),
        stdout=open(stack.log_dir / "noop.log", "ab"), stderr=-2).start()
    try:
        wait_for_worker(stack.env)
        app = noop_app.app
        app.conf.update(broker_url=stack.env["BROKER_REDIS_URL"], result_backend=stack.env["BROKER_REDIS_URL"],
                        task_default_queue="noop")
        timings = []
        for i in range(turns):
            started = time.perf_counter()
            result = chain(*(app.signature("noop.step", queue="noop") for _ in range(4)))({"i": i})
            result.get(timeout=30)
            timings.append((time.perf_counter() - started) * 1000)
        return timings
    finally:
        worker.stop()


def _celery() -> list[str]:
    import sys
    return [sys.executable, "-m", "celery"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), TURNSTREAM_TURN_RATE_LIMIT="100000/minute")  # N turns from one user
        try:
            stack.start_redis()
            stack.apply_env()
            stack.start_worker()
            stack.start_web()
            time_turns(stack, 5)  # warm-up
            ours = time_turns(stack, args.turns)
            stack.workers[0].stop()
            stack.workers.clear()
            time_bare_chains(stack, 5)
            bare = time_bare_chains(stack, args.turns)
        finally:
            stack.stop()
    print(summary("turnstream turn (POST -> done)", ours))
    print(summary("bare Celery chain of 4 no-ops", bare))
    p50 = sorted(ours)[len(ours) // 2] / sorted(bare)[len(bare) // 2]
    print(f"ratio p50 turnstream / bare chain: {p50:.2f}x")


if __name__ == "__main__":
    main()
