"""The progress outbox: events workers could not publish while the progress Redis was down.

Rules:
- A worker's event that fails to publish is kept, with its dedupe name, in the outbox; so is
  every later event of a turn while the outbox holds events of that turn, and every later
  event of the process while it knows the outbox in use: the outbox is a queue, so a turn's
  events reach its log in the order they were made.
- The outbox is one list on the broker (noeviction, AOF) for every worker, so its order is the
  order the events were made in, across processes, and a worker killed meanwhile loses none
  of them. Each worker process may hold TURNSTREAM_PROGRESS_OUTBOX_MAX (1,000) events in it;
  an event past that bound, or one kept while the broker is down too, is lost: it is counted
  in `turnstream_progress_outbox_overflow_total` and logged, never dropped silently.
- A thread of each worker process (workers.celery_app) publishes the outbox as soon as the
  progress Redis answers, oldest first, one process at a time (a lock on the broker).
- While a turn has events waiting in the outbox, a stream does not restore its terminal event
  from the record (shared.terminal_event's safety net): the outbox publishes it, after the rest.

Rejected: a bounded deque in each worker's memory. It is as fast, but a worker killed while the
progress Redis is down would take its events with it, and two workers' queues flushed apart
would mix a turn's events out of order."""

import json
import logging
import os
import threading
import time
import uuid

import redis

from shared import keys, liveness, metrics
from shared.progress import Rendered, append_and_publish
from shared.redis_stores import client, master_only
from shared.settings import get_settings

log = logging.getLogger(__name__)
BATCH = 100
LOCK_MS = 2000  # renewed after each event: a publisher killed mid-flush holds the others up this long
IN_USE_S = 10.0  # after its last sight of a non-empty outbox, a process checks each turn for waiting events

# KEYS: outbox, per-worker counts, the turn's pending counter. ARGV: entry, max, worker, ttl s.
_KEEP = master_only("""
if tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0') >= tonumber(ARGV[2]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return 1
""")

# KEYS: outbox, per-worker counts, the turn's pending counter. ARGV: the entry just published
# (the list's head), its worker. Returns how many events the outbox still holds.
_DONE = master_only("""
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then
  redis.call('LPOP', KEYS[1])
  if tonumber(redis.call('HINCRBY', KEYS[2], ARGV[2], -1)) <= 0 then redis.call('HDEL', KEYS[2], ARGV[2]) end
  if tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then redis.call('DECR', KEYS[3]) end
end
return redis.call('LLEN', KEYS[1])
""")

_seen_in_use = 0.0  # monotonic time this process last knew the outbox to hold events
_lock = threading.Lock()


def in_use() -> bool:
    """Did this process see the outbox hold events lately (its own or another worker's)?"""
    return bool(_seen_in_use) and time.monotonic() - _seen_in_use < IN_USE_S


def _note_in_use() -> None:
    global _seen_in_use
    with _lock:
        _seen_in_use = time.monotonic()


def must_queue(session_id: str, message_id: str) -> bool:
    """Must this turn's next event go behind events of it already waiting in the outbox?"""
    if not in_use():
        return False
    try:
        return waiting(session_id, message_id)
    except redis.RedisError:
        return False


def keep(session_id: str, message_id: str, rendered: Rendered, dedupe: str | None) -> bool:
    """Put an event in the outbox; False (counted, logged) if it could not be kept."""
    entry = json.dumps({"session_id": session_id, "message_id": message_id, "kind": rendered.kind,
                        "data": rendered.data, "wire": rendered.wire, "dedupe": dedupe,
                        "worker": liveness.worker_id(), "nonce": uuid.uuid4().hex[:8]})
    settings = get_settings()
    try:
        kept = client("broker").register_script(_KEEP)(
            keys=[keys.outbox(), keys.outbox_counts(), keys.outbox_pending(session_id, message_id)],
            args=[entry, settings.progress_outbox_max, liveness.worker_id(), settings.progress_ttl_s])
    except redis.RedisError as exc:
        metrics.OUTBOX_OVERFLOW.labels(reason="broker_down").inc()
        log.error("progress event %s of %s/%s lost: the progress and broker Redis are both down (%s)",
                  dedupe, session_id, message_id, exc)
        return False
    if not kept:
        metrics.OUTBOX_OVERFLOW.labels(reason="full").inc()
        log.error("progress event %s of %s/%s lost: this worker holds %d events in the outbox already "
                  "(TURNSTREAM_PROGRESS_OUTBOX_MAX)", dedupe, session_id, message_id, settings.progress_outbox_max)
        return False
    metrics.OUTBOX_QUEUED.inc()
    _note_in_use()
    return True


def waiting(session_id: str, message_id: str, r: redis.Redis | None = None) -> bool:
    """Does the outbox hold events of this turn?"""
    return int((r or client("broker")).get(keys.outbox_pending(session_id, message_id)) or 0) > 0


def holding(r: redis.Redis | None = None) -> bool:
    """Does the outbox hold any event? (Checked each beat; a non-empty outbox marks it in use.)"""
    held = (r or client("broker")).llen(keys.outbox()) > 0
    if held:
        _note_in_use()
    return held


def flush() -> int:
    """Publish the outbox, oldest first, until it is empty or the progress Redis fails again;
    returns how many were published. One process at a time (a lock on the broker), so in order."""
    broker = client("broker")
    token = uuid.uuid4().hex
    if not broker.set(keys.outbox_lock(), token, nx=True, px=LOCK_MS):
        return 0
    published = 0
    try:
        while True:
            entries = broker.lrange(keys.outbox(), 0, BATCH - 1)
            if not entries:
                return published
            for raw in entries:
                entry = json.loads(raw)
                try:
                    append_and_publish(entry["session_id"], entry["message_id"],
                                       Rendered(entry["kind"], entry["data"], entry["wire"]), entry["dedupe"])
                except redis.RedisError:
                    return published
                broker.register_script(_DONE)(
                    keys=[keys.outbox(), keys.outbox_counts(), keys.outbox_pending(entry["session_id"],
                                                                                   entry["message_id"])],
                    args=[raw, entry["worker"]])
                published += 1
                broker.pexpire(keys.outbox_lock(), LOCK_MS)
    finally:
        if broker.get(keys.outbox_lock()) == token:
            broker.delete(keys.outbox_lock())


def _forget_after_fork() -> None:
    global _seen_in_use
    _seen_in_use = 0.0


os.register_at_fork(after_in_child=_forget_after_fork)
