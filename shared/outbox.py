"""The progress outbox: events a worker process could not publish while the progress Redis was down.

Rules:
- A worker's event that fails to publish is kept, with its dedupe name, in this process's
  outbox, and so is every later event of the process while the outbox holds any: the outbox is
  a queue, so its events reach the log in the order they were made.
- The outbox is a list on the broker (noeviction, AOF), one per worker process, bounded by
  TURNSTREAM_PROGRESS_OUTBOX_MAX (1,000). An event past that bound, or one kept while the
  broker is down too, is lost: it is counted in `turnstream_progress_outbox_overflow_total`
  and logged, never dropped silently.
- A thread of each worker process (workers.celery_app) publishes the outbox as soon as the
  progress Redis answers, oldest first; the liveness sweep (workers.redelivery) publishes the
  outbox of a worker process that died.
- While a turn has events waiting in an outbox, a stream does not restore its terminal event
  from the record (shared.terminal_event's safety net): the outbox publishes it, after the rest.

Rejected: a bounded deque in the worker's memory. It is as fast, but a worker killed while the
progress Redis is down would take its events with it; the broker already holds everything
else a turn needs to survive that."""

import json
import logging
import os
import threading

import redis

from shared import keys, liveness, metrics
from shared.progress import Rendered, append_and_publish
from shared.redis_roles import client
from shared.settings import get_settings

log = logging.getLogger(__name__)
BATCH = 100

# KEYS: outbox, outbox workers set, the turn's pending counter. ARGV: entry, max, worker, ttl s.
_KEEP = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return 1
"""

# KEYS: outbox, the turn's pending counter. ARGV: the entry just published (the list's head).
_DONE = """
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then
  redis.call('LPOP', KEYS[1])
  if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
end
return redis.call('LLEN', KEYS[1])
"""

_held = 0  # entries this process put in its outbox and has not published yet
_lock = threading.Lock()
_flushing = threading.Lock()


def holding() -> bool:
    """Does this process's outbox hold events (so a new one must queue behind them)?"""
    return _held > 0


def keep(session_id: str, message_id: str, rendered: Rendered, dedupe: str | None) -> bool:
    """Put an event in this process's outbox; False (counted, logged) if it could not be kept."""
    global _held
    entry = json.dumps({"session_id": session_id, "message_id": message_id, "kind": rendered.kind,
                        "data": rendered.data, "wire": rendered.wire, "dedupe": dedupe})
    settings = get_settings()
    worker = liveness.worker_id()
    try:
        kept = client("broker").register_script(_KEEP)(
            keys=[keys.outbox(worker), keys.outbox_workers(), keys.outbox_pending(session_id, message_id)],
            args=[entry, settings.progress_outbox_max, worker, settings.progress_ttl_s])
    except redis.RedisError as exc:
        metrics.OUTBOX_OVERFLOW.labels(reason="broker_down").inc()
        log.error("progress event %s of %s/%s lost: the progress and broker Redis are both down (%s)",
                  dedupe, session_id, message_id, exc)
        return False
    if not kept:
        metrics.OUTBOX_OVERFLOW.labels(reason="full").inc()
        log.error("progress event %s of %s/%s lost: the outbox holds %d events already (TURNSTREAM_PROGRESS_OUTBOX_MAX)",
                  dedupe, session_id, message_id, settings.progress_outbox_max)
        return False
    metrics.OUTBOX_QUEUED.inc()
    with _lock:
        _held += 1
    return True


def waiting(session_id: str, message_id: str, r: redis.Redis | None = None) -> bool:
    """Does some outbox hold events of this turn?"""
    return int((r or client("broker")).get(keys.outbox_pending(session_id, message_id)) or 0) > 0


def flush(worker: str | None = None) -> int:
    """Publish `worker`'s outbox (this process's by default), oldest first, until it is empty or
    the progress Redis fails again; returns how many were published."""
    global _held
    worker = worker or liveness.worker_id()
    mine = worker == liveness.worker_id()
    broker = client("broker")
    published = 0
    with _flushing:
        while True:
            entries = broker.lrange(keys.outbox(worker), 0, BATCH - 1)
            if not entries:
                broker.srem(keys.outbox_workers(), worker)
                if mine:
                    with _lock:
                        _held = 0
                return published
            for raw in entries:
                entry = json.loads(raw)
                try:
                    append_and_publish(entry["session_id"], entry["message_id"],
                                       Rendered(entry["kind"], entry["data"], entry["wire"]), entry["dedupe"])
                except redis.RedisError:
                    return published
                left = broker.register_script(_DONE)(
                    keys=[keys.outbox(worker), keys.outbox_pending(entry["session_id"], entry["message_id"])],
                    args=[raw])
                published += 1
                if mine:
                    with _lock:
                        _held = left


def orphaned(r: redis.Redis | None = None) -> list[str]:
    """Worker ids whose outbox may still hold events."""
    return sorted((r or client("broker")).smembers(keys.outbox_workers()))


def _forget_after_fork() -> None:
    global _held
    _held = 0


os.register_at_fork(after_in_child=_forget_after_fork)
