"""Prometheus metrics every process records, and the short window of guard outcomes /ops shows.

Counters and histograms live here so the web tier, the workers and the tool guards share one
set of names (README, "Operations"). With PROMETHEUS_MULTIPROC_DIR set, prometheus-client
writes each process's samples to files in that directory and `registry()` aggregates them:
gunicorn with several workers, Celery's prefork children and, in dev, web and workers on one
machine all show up in one /metrics.

Guard outcomes are also counted per minute in the progress Redis, because /ops needs ratios
over the last few minutes across every worker on every machine, which cumulative
per-process counters cannot give. That write is best effort: telemetry never fails a tool call."""

import logging
import os
import time

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from shared import keys
from shared.events import STEPS
from shared.redis_roles import client
from shared.settings import get_settings

log = logging.getLogger(__name__)

STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)

# What a guard can report for one tool call, in the guards' own words: "bypass" is a call that did
# not use the cache or memo (not cacheable, strict mode, or its Redis is down). The guards (the exec
# cache and the permission memo in shared/) call record_exec_cache / record_auth_memo with one of these.
EXEC_CACHE_RESULTS = ("hit", "miss", "coalesced", "bypass")
AUTH_MEMO_RESULTS = ("hit", "miss", "bypass")
GUARD_RESULTS = {"exec_cache": EXEC_CACHE_RESULTS, "auth_memo": AUTH_MEMO_RESULTS}
# The outcomes a ratio is taken over: lookups that reached the cache or memo.
RATIO_BASIS = {"exec_cache": ("hit", "miss", "coalesced"), "auth_memo": ("hit", "miss")}
TURN_OUTCOMES = ("done", "failed", "cancelled")

STEP_DURATION = Histogram("turnstream_step_duration_seconds", "Wall time of one step of a turn (a Celery task).",
                          ["step", "outcome"], buckets=STEP_BUCKETS)
TURNS = Counter("turnstream_turns", "Turns that reached a final state, by outcome.", ["outcome"])
TURNS_ACCEPTED = Counter("turnstream_turns_accepted", "Prompts accepted by the API and enqueued.")
EXEC_CACHE = Counter("turnstream_exec_cache", "Tool calls by execution-cache result.", ["result"])
AUTH_MEMO = Counter("turnstream_auth_memo", "Permission checks by memo result.", ["result"])
SSE_CLIENTS = Gauge("turnstream_sse_clients", "Open SSE streams, summed over live web processes.",
                    multiprocess_mode="livesum")
SSE_CHANNELS = Gauge("turnstream_sse_channels", "Progress channels web processes subscribe to.",
                     multiprocess_mode="livesum")
SSE_CLIENTS_CUT = Counter("turnstream_sse_clients_cut", "SSE clients cut off for reading too slowly.")
SSE_EVENTS_SENT = Counter("turnstream_sse_events_sent", "Progress events written to SSE clients.")

_GUARD_COUNTERS = {"exec_cache": EXEC_CACHE, "auth_memo": AUTH_MEMO}


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def registry() -> CollectorRegistry:
    """The registry to expose: every process's files in multiprocess mode, else this process's."""
    directory = multiprocess_dir()
    if not directory:
        return REGISTRY
    os.makedirs(directory, exist_ok=True)
    aggregated = CollectorRegistry()
    multiprocess.MultiProcessCollector(aggregated, path=directory)
    return aggregated


def prepare_multiprocess_dir(directory: str, wipe: bool) -> None:
    """Create the directory; wipe old samples first when a fresh set of processes starts."""
    os.makedirs(directory, exist_ok=True)
    if wipe:
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))


def forget_dead_processes(directory: str | None = None) -> list[int]:
    """Drop the live gauges of processes that no longer exist (a restarted container keeps its directory)."""
    directory = directory or multiprocess_dir()
    if not directory or not os.path.isdir(directory):
        return []
    dead = set()
    for name in os.listdir(directory):
        if name.startswith("gauge_live") and name.endswith(".db"):
            pid = int(name.rsplit("_", 1)[1].removesuffix(".db"))
            if not _alive(pid):
                dead.add(pid)
    for pid in dead:
        multiprocess.mark_process_dead(pid, directory)
    return sorted(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def observe_step(step: str, seconds: float, ok: bool) -> None:
    STEP_DURATION.labels(step=step if step in STEPS else "other", outcome="ok" if ok else "error").observe(seconds)


def record_turn(outcome: str) -> None:
    if outcome not in TURN_OUTCOMES:
        raise ValueError(f"unknown turn outcome {outcome!r}; expected one of {TURN_OUTCOMES}")
    TURNS.labels(outcome=outcome).inc()


def record_exec_cache(result: str, r: redis.Redis | None = None) -> None:
    """Count one tool call's execution-cache result (hit, miss, coalesced, bypass)."""
    _record_guard("exec_cache", result, r)


def record_auth_memo(result: str, r: redis.Redis | None = None) -> None:
    """Count one permission check's memo result (hit, miss, bypass)."""
    _record_guard("auth_memo", result, r)


def _record_guard(guard: str, result: str, r: redis.Redis | None) -> None:
    if result not in GUARD_RESULTS[guard]:
        raise ValueError(f"unknown {guard} result {result!r}; expected one of {GUARD_RESULTS[guard]}")
    _GUARD_COUNTERS[guard].labels(result=result).inc()
    key = keys.guard_window(time.time() // 60)
    try:
        pipe = (r or client("progress")).pipeline(transaction=False)
        pipe.hincrby(key, f"{guard}:{result}", 1)
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


def _declare_series() -> None:
    """Create every known label set at zero, so each documented series exists before its first event."""
    for step in STEPS:
        for outcome in ("ok", "error"):
            STEP_DURATION.labels(step=step, outcome=outcome)
    for outcome in TURN_OUTCOMES:
        TURNS.labels(outcome=outcome)
    for guard, results in GUARD_RESULTS.items():
        for result in results:
            _GUARD_COUNTERS[guard].labels(result=result)


_declare_series()
