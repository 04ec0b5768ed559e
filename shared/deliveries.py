"""Poison messages: a step whose worker keeps dying ends its turn instead of looping.

With late acks and reject-on-worker-lost, a message whose step kills its worker (a segfault
in a model library, the OOM killer) goes back to the queue and is taken again, forever. So
each step delivery is counted on the broker while it runs: one is added for the turn's step
(a hash per turn, field = step tag such as `reason-1` or `call_tool-r1c0`) by the task's first
claim, in its script (`to_count`), not in a round trip of its own, and `end` takes
it off again once the task is over, whatever it returned (after Celery sent its chain's next
step: workers.steps.TurnTask). What is left counts deliveries
whose worker died under them. A delivery that finds TURNSTREAM_MAX_DELIVERIES of those
already there does not run: the turn fails ("the llm worker crashed 3 times in this step").

Rejected: counting deliveries that kombu flags `redelivered`. The flag is also set on a
message handed back on purpose (a step that waited out a broker outage, a soft shutdown),
so it cannot tell a crash from a hand-back; a count that only a finished run takes back can.
A step cut short by a SIGTERM past the soft shutdown counts as a crash too, which is what it
looked like to the turn."""

import logging
import threading
from dataclasses import dataclass

import redis

from shared import keys
from shared.breakers import UNAVAILABLE
from shared.redis_stores import client
from shared.settings import get_settings

log = logging.getLogger(__name__)
_owed: list[tuple[str, str, str]] = []  # ends this process could not count yet (end_or_owe)
_owed_lock = threading.Lock()


@dataclass
class Delivery:
    """The delivery of the task this thread (greenlet) runs: counted by the task's first claim,
    in the same script (turns.claim_step_counting, tool_journal.begin), not a round trip of its own."""

    session_id: str
    message_id: str
    tag: str
    task: str  # the task's name, the step it runs first and what it is doing, for the turn's
    step: str  # sentence when its deliveries keep dying (shared.failures.crash_cause)
    doing: str | None = None
    counted: bool = False


_current = threading.local()


def starting(delivery: Delivery) -> None:
    """A task of this turn starts here: its first claim counts it (to_count)."""
    _current.delivery = delivery


def to_count(session_id: str, message_id: str) -> str | None:
    """The tag a claim of this turn counts in its script: this task's, if not counted yet."""
    delivery: Delivery | None = getattr(_current, "delivery", None)
    if delivery is None or delivery.counted or (delivery.session_id, delivery.message_id) != (session_id, message_id):
        return None
    return delivery.tag


def mark_counted() -> None:
    """A claim's script counted this task's delivery: it is ended when the task is over. Called
    as soon as the script answers, so a retried claim does not count it again."""
    _current.delivery.counted = True


def current() -> Delivery | None:
    return getattr(_current, "delivery", None)


def finished() -> Delivery | None:
    """The task is over: its delivery, and this thread no longer runs one."""
    delivery, _current.delivery = getattr(_current, "delivery", None), None
    return delivery


def end(session_id: str, message_id: str, tag: str, r: redis.Redis | None = None) -> None:
    """The delivery returned (its worker survived it): it no longer counts."""
    (r or client("broker")).hincrby(keys.turn_deliveries(session_id, message_id), keys.valid_step_tag(tag), -1)


def end_or_owe(session_id: str, message_id: str, tag: str) -> None:
    """`end`, without waiting for the broker: while it is down the end is owed and counted later
    (settle_owed, from the worker's liveness thread). A step must not wait past its time limit to
    count itself, and a delivery that handed its message back during an outage is no crash."""
    try:
        end(session_id, message_id, tag)
    except UNAVAILABLE as exc:
        log.info("end of %s for %s/%s owed until the broker answers (%r)", tag, session_id, message_id, exc)
        with _owed_lock:
            _owed.append((session_id, message_id, tag))


def settle_owed(r: redis.Redis | None = None) -> int:
    """Count the ends owed; returns how many were counted (the rest stay owed)."""
    with _owed_lock:
        owed, _owed[:] = list(_owed), []
    counted = 0
    for i, (session_id, message_id, tag) in enumerate(owed):
        try:
            end(session_id, message_id, tag, r)
        except UNAVAILABLE:
            with _owed_lock:
                _owed.extend(owed[i:])
            break
        counted += 1
    return counted


def exhausted(crashes: int) -> bool:
    return crashes >= get_settings().max_deliveries
