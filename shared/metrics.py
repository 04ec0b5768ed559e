"""Prometheus metrics every process records, and the short window of guard outcomes /ops shows.

Counters and histograms live here so the web tier, the workers and the tool guards share one
set of names (README, "Operations"). With PROMETHEUS_MULTIPROC_DIR set, prometheus-client
writes each process's samples to files in that directory and `registry()` aggregates them:
gunicorn with several workers, Celery's prefork children and, in dev, web and workers on one
machine all show up in one /metrics.

Guard outcomes are also counted per minute in the progress Redis (shared.guards.stats)."""

import logging
import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from shared.defaults import STORES
from shared.vocabulary import FINAL_STATUSES, GUARD_RESULTS, STEPS

log = logging.getLogger(__name__)

STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)

TURN_STATUSES = tuple(sorted(FINAL_STATUSES))  # the `outcome` label of turnstream_turns_total

STEP_DURATION = Histogram("turnstream_step_duration_seconds", "Wall time of one step of a turn (a Celery task).",
                          ["step", "outcome"], buckets=STEP_BUCKETS)
TURNS = Counter("turnstream_turns", "Turns that reached a final state, by outcome.", ["outcome"])
TURNS_ACCEPTED = Counter("turnstream_turns_accepted", "Prompts accepted by the API and enqueued.")
REQUESTS_LIMITED = Counter("turnstream_requests_limited", "Requests refused (429) by the per-client request limit.")
EXEC_CACHE = Counter("turnstream_exec_cache", "Tool calls by execution-cache result.", ["result"])
AUTH_MEMO = Counter("turnstream_auth_memo", "Permission checks by memo result.", ["result"])
SSE_CLIENTS = Gauge("turnstream_sse_clients", "Open SSE streams, summed over live web processes.",
                    multiprocess_mode="livesum")
SSE_CHANNELS = Gauge("turnstream_sse_channels", "Progress channels web processes subscribe to.",
                     multiprocess_mode="livesum")
SSE_CLIENTS_CUT = Counter("turnstream_sse_clients_cut", "SSE clients cut off for reading too slowly.")
SSE_EVENTS_SENT = Counter("turnstream_sse_events_sent", "Progress events written to SSE clients.")
# Redis stores and their circuit breakers (shared.breakers).
REDIS_FAILURES = Counter("turnstream_redis_failures_total",
                         "Connection failures and timeouts talking to a Redis store", ["store"])
BREAKER_REJECTED = Counter("turnstream_redis_breaker_rejected_total",
                           "Calls refused at once because the store's breaker was open", ["store"])
BREAKER_TRIPS = Counter("turnstream_redis_breaker_trips_total", "Times a store's breaker opened", ["store"])
# livemax: across the processes of a host (multiprocess mode) a store counts as open if any live
# process has its breaker open; a dead process's last state does not linger.
BREAKER_OPEN = Gauge("turnstream_redis_breaker_open", "1 while a store's breaker is open or half-open", ["store"],
                     multiprocess_mode="livemax")
# Guards that skipped themselves because their Redis failed (shared.guards.degradation).
GUARD_DEGRADED = Counter("turnstream_guard_degraded", "Calls that skipped a guard because its Redis failed", ["guard"])

# Durable turns: what the model was asked (a redelivery resumes instead of asking again), turns
# sent again from their checkpoint, and progress events the outbox could not keep.
REASONER_CALLS = Counter("turnstream_reasoner_calls", "Calls to the reasoner, by reasoner and kind (decide, answer).",
                         ["reasoner", "kind"])
TURNS_RESUMED = Counter("turnstream_turns_resumed", "Turns sent again from their checkpoint, by cause.", ["cause"])
OUTBOX_QUEUED = Counter("turnstream_progress_outbox_queued", "Progress events kept in a worker's outbox "
                        "because the progress Redis was down.")
OUTBOX_OVERFLOW = Counter("turnstream_progress_outbox_overflow", "Progress events lost because a worker's "
                          "outbox was full (TURNSTREAM_PROGRESS_OUTBOX_MAX) or the broker was down too.", ["reason"])
RESUME_CAUSES = ("dead_worker", "no_progress", "orphaned")
OUTBOX_OVERFLOW_REASONS = ("full", "broker_down")

GUARD_COUNTERS = {"exec_cache": EXEC_CACHE, "auth_memo": AUTH_MEMO}


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


def record_turn(status: str) -> None:
    if status not in TURN_STATUSES:
        raise ValueError(f"not a final turn status: {status!r}; expected one of {TURN_STATUSES}")
    TURNS.labels(outcome=status).inc()


def record_reasoner_call(reasoner: str, kind: str) -> None:
    REASONER_CALLS.labels(reasoner=reasoner, kind=kind).inc()


def record_resume(cause: str) -> None:
    TURNS_RESUMED.labels(cause=cause if cause in RESUME_CAUSES else "other").inc()


def _declare_series() -> None:
    """Create every known label set at zero, so each documented series exists before its first event."""
    for step in STEPS:
        for outcome in ("ok", "error"):
            STEP_DURATION.labels(step=step, outcome=outcome)
    for status in TURN_STATUSES:
        TURNS.labels(outcome=status)
    for cause in RESUME_CAUSES:
        TURNS_RESUMED.labels(cause=cause)
    for reason in OUTBOX_OVERFLOW_REASONS:
        OUTBOX_OVERFLOW.labels(reason=reason)
    for guard, results in GUARD_RESULTS.items():
        for result in results:
            GUARD_COUNTERS[guard].labels(result=result)
    # Breakers too: a closed breaker reads 0, not "no data", for dashboards and alerts.
    for store in STORES:
        for counter in (REDIS_FAILURES, BREAKER_REJECTED, BREAKER_TRIPS):
            counter.labels(store)
        BREAKER_OPEN.labels(store).set(0)


_declare_series()
