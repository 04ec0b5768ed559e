"""Guard outcomes per minute, for the ratios /ops shows over the last few minutes.

Each outcome bumps its Prometheus counter (shared.metrics) and a per-minute hash in the
progress Redis, because /ops needs ratios over a recent window across every worker on every
machine, which cumulative per-process counters cannot give. The Redis write is best effort:
telemetry never fails a tool call.

The per-minute counts are added up in the process and written by a daemon thread (a greenlet
under gevent) every FLUSH_S, in one pipeline for everything counted meanwhile, so a tool call
costs no round trip for them; /ops sees them up to FLUSH_S later, and a process that dies loses
at most its last FLUSH_S of counts. Rejected: a write per outcome, two round trips per tool call."""

import logging
import os
import threading
import time
from collections import Counter

import redis

from shared import keys, metrics
from shared.redis_stores import client
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


FLUSH_S = 0.5

_pending: Counter = Counter()  # (minute, "guard:result") -> count, not yet written
_lock = threading.Lock()
_flusher_pid: int | None = None  # the process whose flusher runs (a forked child starts its own)


def _record_guard(guard: str, result: str, count: int, r: redis.Redis | None) -> None:
    if result not in GUARD_RESULTS[guard]:
        raise ValueError(f"unknown {guard} result {result!r}; expected one of {GUARD_RESULTS[guard]}")
    metrics.GUARD_COUNTERS[guard].labels(result=result).inc(count)
    with _lock:
        _pending[(int(time.time() // 60), f"{guard}:{result}")] += count
    if r is not None:
        flush(r)  # a caller with its own client wants the counts written now
    else:
        _ensure_flusher()


def flush(r: redis.Redis | None = None) -> None:
    """Write the counts recorded so far to the per-minute hashes, in one pipeline."""
    with _lock:
        batch = dict(_pending)
        _pending.clear()
    if not batch:
        return
    ttl = get_settings().ops_window_s + 120
    try:
        pipe = (r or client("progress")).pipeline(transaction=False)
        for (minute, field), count in batch.items():
            pipe.hincrby(keys.guard_window(minute), field, count)
            pipe.expire(keys.guard_window(minute), ttl)
        pipe.execute()
    except redis.RedisError as exc:
        log.debug("guard window not updated: %s", exc)


def _ensure_flusher() -> None:
    global _flusher_pid
    if _flusher_pid == os.getpid():
        return
    with _lock:
        if _flusher_pid == os.getpid():
            return
        _flusher_pid = os.getpid()
    threading.Thread(target=_flush_forever, name="guard-window-flusher", daemon=True).start()


def _flush_forever() -> None:
    while True:
        time.sleep(FLUSH_S)
        try:
            flush()
        except Exception as exc:  # noqa: BLE001 - telemetry never stops a process
            log.debug("guard window flush failed: %s", exc)


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
