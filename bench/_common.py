"""Helpers shared by the benchmark scripts."""

import statistics
import sys
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
