"""Sending a turn again from its checkpoint: when its worker died, or when it made no progress.

Late acks and the broker's visibility timeout (shared.celery_config.transport_options) cover a
worker that dies holding a message. They do not cover a message kombu's Redis transport drops:
BRPOP takes a message off the queue before the worker records it as unacknowledged, so a broker
that dies between the two loses it. The broker still has the turn's record (AOF) and an in-flight index scored
by each turn's last status change; a turn that has not moved for a visibility timeout is
sent again from its checkpoint (shared.turns), not from its first step.

A worker process that dies (kill -9, a lost host) is noticed much sooner, by shared.liveness:
each beat (TURNSTREAM_HEARTBEAT_S), one live process looks for dead ones, sends every turn whose
current step (or one of whose tool calls) a dead one held again from its checkpoint, and
the progress outbox (shared.outbox) keeps what the dead one could not publish. A delivery of a step
that a live worker runs, or that the turn has moved past, does nothing (workers.steps), so a
turn sent twice still runs each step once, logs every event once and answers once. A turn sent
`turn_max_redeliveries` times without finishing is failed instead of looping.

One worker sweeps at a time (a lock on the broker per kind of sweep); the sweeps run in daemon
threads of the worker processes (workers.celery_app)."""

import logging
import time
import uuid

import redis
from celery import Celery

from shared import deliveries, keys, liveness, metrics, outbox, tool_journal, turns
from shared.failures import sentence
from shared.progress import Publisher
from shared.redis_stores import client
from shared.settings import get_settings
from shared.terminal_event import publish_terminal_event
from shared.turn_flow import resume_turn
from shared.vocabulary import FAILED

log = logging.getLogger(__name__)
BATCH = 100
OUTBOX_RETRY_S = 0.5


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
        if resend(app, record, "no_progress", now, r):
            log.warning("turn %s/%s made no progress for %ss: sent again from its checkpoint",
                        session_id, message_id, settings.visibility_timeout_s)
            sent += 1
    return sent


def resend(app: Celery, record: turns.TurnRecord, cause: str, now: float, r: redis.Redis) -> bool:
    """Send the turn again from its checkpoint. A turn that made no progress is failed past
    TURNSTREAM_TURN_MAX_REDELIVERIES re-sends; one whose worker died is not: a dead worker is no
    fault of the turn (a step that keeps killing its worker is the delivery counter's to stop)."""
    session_id, message_id = record.session_id, record.message_id
    attempts = r.hincrby(keys.turn_record(session_id, message_id), "redeliveries" if cause == "no_progress"
                         else "worker_losses", 1)
    if cause == "no_progress" and attempts > get_settings().turn_max_redeliveries:
        give_up(session_id, message_id, attempts - 1, r)
        return False
    turns.touch_in_flight(session_id, message_id, now, r)
    task = resume_turn(app, record.payload, record.checkpoint)
    metrics.record_resume(cause)
    log.warning("turn %s/%s sent again from its checkpoint (%s, %d): %s", session_id, message_id, cause, attempts, task)
    return True


def resend_from_dead_workers(app: Celery, now: float | None = None) -> int:
    """Send again every turn a dead worker process held; returns how many were sent."""
    r = client("broker")
    now = time.time() if now is None else now
    lock = int(get_settings().beat_s * 900)
    if not r.set(keys.liveness_lock(), uuid.uuid4().hex, nx=True, px=lock):
        return 0
    sent = 0
    for worker in liveness.dead_workers(r, now):
        for session_id, message_id in set(liveness.turns_of(worker, r)):
            record = turns.get_turn(session_id, message_id, r)
            if not record or record.final or not record.payload:
                continue
            held = (record.runner == worker or tool_journal.unfinished_by(session_id, message_id, worker, r)
                    or (not record.runner and liveness.has_received(worker, session_id, message_id, r)))
            if held and resend(app, record, "dead_worker", now, r):
                log.warning("worker %s died holding turn %s/%s", worker, session_id, message_id)
                sent += 1
        liveness.forget(worker, r)
    return sent


def let_go_of_moved_turns(r: redis.Redis) -> None:
    """Forget the turns this process no longer runs (a step it ran handed over without a release)
    and the received messages whose step claimed the turn here: one script per batch, not two
    round trips per turn (under load a beat finds every turn this process worked on since)."""
    worker = liveness.worker_id()
    members = []
    for member in r.smembers(keys.worker_turns(worker)):
        session_id, message_id, *rest = member.split(":")
        if rest and rest[0] != liveness.RECEIVED:
            continue  # a tool call: the journal lets go of it when it ends
        members.append((member, session_id, message_id, bool(rest)))
    if members:
        turns.forget_moved(worker, members, r)


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


def beat_forever(app: Celery) -> None:
    """The loop of each step-running process's liveness thread: beat, publish the outbox, act on
    dead workers. Never raises: a dead broker only skips beats.

    The outbox is tried apart from the beat, and every OUTBOX_RETRY_S while it may hold events:
    a beat that fails (the broker down, or its breaker still open) must not hold back the events
    waiting there until the next beat, seconds after the broker is back."""
    interval = get_settings().beat_s
    next_beat = 0.0
    while True:
        if time.monotonic() >= next_beat:
            next_beat = time.monotonic() + interval
            _beat(app)
        held = _publish_outbox()
        time.sleep(OUTBOX_RETRY_S if held else max(0.0, next_beat - time.monotonic()))


def _beat(app: Celery) -> None:
    try:
        r = client("broker")
        liveness.beat(r)
        resend_from_dead_workers(app)
        let_go_of_moved_turns(r)
        deliveries.settle_owed(r)
    except Exception as exc:  # a beat must never kill its thread; the next one retries
        log.warning("liveness beat skipped: %r", exc)


def _publish_outbox() -> bool:
    """Publish what the outbox holds; True while it may still hold events (it did, or it could
    not be read and this process saw it in use lately), so the caller comes back soon."""
    try:
        held = outbox.holding()
        if held:
            outbox.flush()
        return held
    except redis.RedisError as exc:  # the broker or the progress Redis is down: try again shortly
        log.debug("outbox not published yet: %r", exc)
        return outbox.in_use()
    except Exception as exc:  # anything else is a fault to see, but must not kill the thread either
        log.warning("outbox not published: %r", exc)
        return outbox.in_use()


def sweep_forever(app: Celery) -> None:
    """The loop of the sweeper thread: never raises, so a dead broker only skips rounds."""
    interval = get_settings().redelivery_sweep_s
    while True:
        time.sleep(interval)
        try:
            resend_stalled(app)
        except Exception as exc:  # a sweep must never kill its thread; the next one retries
            log.warning("redelivery sweep skipped: %r", exc)
