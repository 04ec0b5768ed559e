"""Two revisions under the same load, interleaved: did a change make turns cheaper?

capacity.py compares turnstream with a bare chain; runs minutes apart on a shared host differ by
+-20 % (its CPU speed drifts), which hides a change of that size. This runs capacity.py's turn
loop on a git revision (checked out in a temporary worktree) and on this checkout by turns,
round after round, and prints each round's ratio (this checkout / the revision) and their
median: adjacent runs see the same host.

Each run, in a process of its own with that tree's code and fresh redis-servers and workers:
50 idle turns one at a time (p50 of the last 40), then 32 callers for --seconds: throughput, the
CPU of every process per turn (client included) and POST -> first SSE event p50/p99.

    python bench/compare_revisions.py REV [--rounds 3] [--seconds 15]

The revision needs capacity.py's helpers (main since 2026-11-26).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MEASURES = ("throughput", "cpu_ms_per_turn", "idle_p50_ms", "first_event_p50_ms", "first_event_p99_ms")


def measure(tree: Path, seconds: float) -> dict[str, float]:
    """One run of `tree`'s code (this file again, in --one mode, with `tree` first on the path)."""
    out = subprocess.run([sys.executable, __file__, "--one", str(tree), "--seconds", str(seconds)],
                         capture_output=True, text=True, cwd=tree / "bench", check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def one_run(tree: Path, seconds: float) -> None:
    sys.path[:0] = [str(tree / "bench"), str(tree)]
    import asyncio

    import httpx

    import capacity as c
    from tests.sse import bearer

    with tempfile.TemporaryDirectory() as tmp:
        stack = c.Stack(Path(tmp), TURNSTREAM_TURN_RATE_LIMIT="100000000/minute", TURNSTREAM_REASONER="rules",
                        TURNSTREAM_TOOL_LATENCY_MS="0", TURNSTREAM_LOG_FORMAT="json")
        try:
            stack.start_redis()
            stack.apply_env()
            system = c.start_system(stack)
            try:
                idle: list[float] = []

                async def idle_turns() -> None:
                    async with httpx.AsyncClient(headers=bearer(), timeout=60) as client:
                        for i in range(50):
                            turn = await c._one_turn(client, stack.base_url, "rev-idle")
                            if i >= 10:
                                idle.append((turn.done - turn.posted) * 1000)

                asyncio.run(idle_turns())
                meter = c.CpuMeter({**system.pids(), **c.redis_pids(stack)})
                busy = c.drive_turns(stack.base_url, 32, seconds)
                cpu = sum(meter.per_turn_ms(busy.completed).values())
            finally:
                system.stop()
        finally:
            stack.stop()
    first = busy.ms("first_event")
    print(json.dumps({"throughput": busy.throughput, "cpu_ms_per_turn": cpu, "idle_p50_ms": c.p(idle, 50),
                      "first_event_p50_ms": c.p(first, 50), "first_event_p99_ms": c.p(first, 99)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", nargs="?")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_run(Path(args.one), args.seconds)
        return
    if not args.rev:
        parser.error("which revision? e.g. `python bench/compare_revisions.py dee55eb`")
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "rev"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), args.rev], check=True)
        try:
            (tree / ".venv").symlink_to(REPO / ".venv")
            rounds = []
            for n in range(args.rounds):
                old = measure(tree, args.seconds)
                new = measure(REPO, args.seconds)
                rounds.append((old, new))
                print(f"round {n + 1}: " + ", ".join(f"{m} {old[m]:.1f} -> {new[m]:.1f}" for m in MEASURES), flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    print(f"\n=== this checkout / {args.rev}, {args.rounds} interleaved rounds (median of the per-round ratios)")
    for m in MEASURES:
        ratios = [new[m] / old[m] for old, new in rounds if old[m]]
        print(f"{m}: " + ", ".join(f"{r:.2f}" for r in ratios) + f" -> median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
