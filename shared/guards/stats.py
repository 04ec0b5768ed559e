"""Guard outcomes per minute, for the ratios /ops shows over the last few minutes.

Each outcome bumps its Prometheus counter (shared.metrics) and a per-minute hash in the
progress Redis, because /ops needs ratios over a recent window across every worker on every
machine, which cumulative per-process counters cannot give. The Redis write is best effort:
telemetry never fails a tool call."""

import logging
import time

import redis

from shared import keys, metrics
from shared.redis_roles import client
from shared.settings import get_settings
from shared.vocabulary import GUARD_RESULTS

log = logging.getLogger(__name__)

# The outcomes a ratio is taken over: lookups that reached the cache or memo.
RATIO_BASIS = {"exec_cache": ("hit", "miss", "coalesced"), "auth_memo": ("hit", "miss")}


def record_exec_cache(result: str, r: redis.Redis | None = None) -> None:
    """Count one tool call's execution-cache result (hit, miss, coalesced, bypass)."""
    _record_guard("exec_cache", result, 1, r)


def record_auth_memo(result: str, r: redis.Redis | None = None, count: int = 1) -> None:
    """Count `count` permission checks with this memo result (hit, miss, bypass)."""
    _record_guard("auth_memo", result, count, r)


def _record_guard(guard: str, result: str, count: int, r: redis.Redis | None) -> None:
    if result not in GUARD_RESULTS[guard]:
        raise ValueError(f"unknown {guard} result {result!r}; expected one of {GUARD_RESULTS[guard]}")
    metrics.GUARD_COUNTERS[guard].labels(result=result).inc(count)
    key = keys.guard_window(time.time() // 60)
    try:
        pipe = (r or client("progress")).pipeline(transaction=False)
        pipe.hincrby(key, f"{guard}:{result}", count)
        pipe.expire(key, get_settings().ops_window_s + 120)
        pipe.execute()
    except redis.RedisError as exc:
        log.debug("guard window not updated: %s", exc)


def guard_window(window_s: int | None = None, now: float | None = None,
                 r: redis.Redis | None = None) -> dict[str, dict[str, int]]:
    """Guard outcome counts over the last `window_s` seconds (whole minutes), per guard and result."""
    window_s = window_s or get_settings().ops_window_s
    current = int((now or time.time()) // 60)
    minutes = range(current - max(1, window_s // 60) + 1, current + 1)
    pipe = (r or client("progress")).pipeline(transaction=False)
    for minute in minutes:
        pipe.hgetall(keys.guard_window(minute))
    counts = {guard: dict.fromkeys(results, 0) for guard, results in GUARD_RESULTS.items()}
    for bucket in pipe.execute():
        for field, value in bucket.items():
            guard, _, result = field.partition(":")
            if result in counts.get(guard, {}):
                counts[guard][result] += int(value)
    return counts


def guard_ratios(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, float | None]]:
    """Each result's share of the lookups that reached the guard's Redis; None when there were none."""
    ratios: dict[str, dict[str, float | None]] = {}
    for guard, basis in RATIO_BASIS.items():
        total = sum(counts[guard][result] for result in basis)
        ratios[guard] = {result: (counts[guard][result] / total if total else None) for result in basis}
    return ratios
