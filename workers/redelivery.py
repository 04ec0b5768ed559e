"""Sending a stalled turn's chain again: the turn-level half of at-least-once delivery.

Late acks and the broker's visibility timeout (shared.celery_config.transport_options) cover a
worker that dies holding a message. They do not cover a message kombu's Redis transport drops:
BRPOP takes a message off the queue before the worker records it as unacknowledged, so a broker
that dies between the two loses it. The broker still has the turn's record (AOF) and an in-flight index scored
by each turn's last status change; a turn that has not moved for a visibility timeout is
sent again from its first step. Steps are idempotent (shared.terminal_event, dedupe names, atomic
transitions), so a chain sent twice still logs every event once and answers once. A turn
sent `turn_max_redeliveries` times without finishing is failed instead of looping.

One worker sweeps at a time (a lock on the broker); the sweep runs in a daemon thread of
every worker process (workers.celery_app)."""

import logging
import time
import uuid

import redis
from celery import Celery

from shared import keys, turns
from shared.failures import sentence
from shared.progress import Publisher
from shared.redis_roles import client
from shared.settings import get_settings
from shared.terminal_event import publish_terminal_event
from shared.turn_flow import send_turn
from shared.vocabulary import FAILED

log = logging.getLogger(__name__)
BATCH = 100


def resend_stalled(app: Celery, now: float | None = None) -> int:
    """Send the chain of every stalled turn again (or fail it past the limit); returns how many were sent."""
    settings = get_settings()
    r = client("broker")
    now = time.time() if now is None else now
    if not r.set(keys.redelivery_lock(), uuid.uuid4().hex, nx=True, px=int(settings.redelivery_sweep_s * 900)):
        return 0
    sent = 0
    for session_id, message_id in turns.in_flight_ids(r, until=now - settings.visibility_timeout_s, limit=BATCH):
        record = turns.get_turn(session_id, message_id, r)
        if not record or record.final or not record.payload:
            turns.leave_in_flight(session_id, message_id, r)
            continue
        attempts = r.hincrby(keys.turn_status(session_id, message_id), "redeliveries", 1)
        if attempts > settings.turn_max_redeliveries:
            give_up(session_id, message_id, attempts - 1, r)
            continue
        turns.touch_in_flight(session_id, message_id, now, r)
        send_turn(app, record.payload)
        log.warning("turn %s/%s made no progress for %ss: sent again (redelivery %d)",
                    session_id, message_id, settings.visibility_timeout_s, attempts)
        sent += 1
    return sent


def give_up(session_id: str, message_id: str, attempts: int, r: redis.Redis) -> None:
    record = turns.get_turn(session_id, message_id, r)
    step = record.step if record else ""
    message = sentence(step or None, f"the turn made no progress after being sent {attempts} times "
                                     "(TURNSTREAM_TURN_MAX_REDELIVERIES)")
    status = turns.update_turn(session_id, message_id, r, status=FAILED, error=message, step=step)
    log.error("turn %s/%s failed: %s", session_id, message_id, message)
    if status == FAILED:
        publish_terminal_event(session_id, message_id, turns.get_turn(session_id, message_id, r),
                               Publisher(session_id, message_id, fail_soft=True))


def sweep_forever(app: Celery) -> None:
    """The loop of the sweeper thread: never raises, so a dead broker only skips rounds."""
    interval = get_settings().redelivery_sweep_s
    while True:
        time.sleep(interval)
        try:
            resend_stalled(app)
        except Exception as exc:  # a sweep must never kill its thread; the next one retries
            log.warning("redelivery sweep skipped: %r", exc)
