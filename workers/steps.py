"""The step machinery every task of a turn runs through, so workers.tasks reads as the flow alone.

- `run_step`: move the turn to `running`, publish `started`, run the step's body, publish
  `finished`; turn any failure into StepFailed (the user's one sentence) or, for a broker
  outage, hand the message back (Reject with requeue) so the step runs again later.
- `start_step`: the transition alone; a turn already done, failed or cancelled stops its flow
  here (Ignore), after making sure its log carries the outcome (shared.terminal_event).
- `forward`: send the next step with this task's errbacks, like Task.replace, but under a task
  id of its own, so Flower, metrics and traces see every step as the task it is.
- `with_broker`: a turn-record operation that waits out a broker outage
  (TURNSTREAM_WORKER_BROKER_WAIT_S) before handing the message back."""

import logging
import time
from collections.abc import Mapping
from typing import Callable, TypeVar

from celery.exceptions import Ignore, Reject

from shared import turns
from shared.breakers import UNAVAILABLE
from shared.events import StepEvent
from shared.progress import Publisher
from shared.settings import get_settings
from shared.terminal_event import publish_terminal_event
from shared.turn_flow import TurnRef
from shared.vocabulary import FINISHED, RUNNING, STARTED, Step, StepPhase, step_dedupe
from workers import guarding
from workers.mcp.client import ToolCallError
from workers.reasoners import ReasonerError

BROKER_POLL_S = 0.5
log = logging.getLogger(__name__)
T = TypeVar("T")
S = TypeVar("S", bound=Mapping)
R = TypeVar("R")


class StepFailed(RuntimeError):
    """A step that could not complete; the message is what the user's `error` event says."""

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step


def with_broker(func: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Call `func` (a turn-record operation), waiting out a broker outage; past the wait,
    hand the message back (Reject with requeue) so the step runs again later."""
    deadline = time.monotonic() + get_settings().worker_broker_wait_s
    while True:
        try:
            return func(*args, **kwargs)
        except UNAVAILABLE as exc:
            if time.monotonic() >= deadline:
                raise Reject(exc, requeue=True) from exc
            time.sleep(BROKER_POLL_S)


def start_step(turn: TurnRef, step: Step) -> Publisher:
    """Move the turn to `running` this step; stop here (Ignore) if it already ended."""
    session_id, message_id = turn["session_id"], turn["message_id"]
    publisher = Publisher(session_id, message_id, fail_soft=True)
    status = with_broker(turns.update_turn, session_id, message_id, status=RUNNING, step=step)
    if status != RUNNING:
        stop_ended_turn(publisher, step, status)
    return publisher


def stop_ended_turn(publisher: Publisher, step: Step, status: str | None) -> None:
    """The turn was cancelled, already finished by an earlier delivery, or is gone: skip the
    rest of its flow, after making sure the log carries the turn's terminal event."""
    log.info("turn %s/%s is %s: skipping %s and the steps after it",
             publisher.session_id, publisher.message_id, status or "gone", step)
    if status is not None:
        record = with_broker(turns.get_turn, publisher.session_id, publisher.message_id)
        publish_terminal_event(publisher.session_id, publisher.message_id, record, publisher)
    raise Ignore()


def publish_phase(publisher: Publisher, step: Step, phase: StepPhase, round_: int | None = None,
                  duration_ms: float | None = None) -> None:
    """A step's `started` or `finished` event, under its dedupe name."""
    publisher.publish(StepEvent(step=step, status=phase, round=round_, duration_ms=duration_ms),
                      dedupe=step_dedupe(step, phase, round_))


def run_step(step: Step, turn: S, body: Callable[[S, Publisher], R], round_: int | None = None) -> R:
    publisher = start_step(turn, step)
    publish_phase(publisher, step, STARTED, round_)
    started = time.perf_counter()
    try:
        result = body(turn, publisher)
    except (StepFailed, Reject, Ignore):
        raise
    except UNAVAILABLE as exc:
        if getattr(exc, "role", None) != "broker":
            raise StepFailed(step, f"{step} failed: {exc}") from exc
        # The broker holds the turn (history, status): its outage is no reason to fail the turn.
        # The message goes back (now, or after the visibility timeout: shared.celery_config) and the step runs again.
        log.warning("%s of %s/%s hit a broker outage; handing the step back", step,
                    turn["session_id"], turn["message_id"])
        raise Reject(exc, requeue=True) from exc
    except (ReasonerError, ToolCallError, guarding.PermissionUnavailable) as exc:
        raise StepFailed(step, f"{step} failed: {exc}") from exc
    except Exception as exc:
        log.exception("%s failed", step)
        raise StepFailed(step, f"{step} failed: {type(exc).__name__}: {exc}") from exc
    publish_phase(publisher, step, FINISHED, round_, ms_since(started))
    return result


def forward(task, signature) -> None:
    """Send the turn's next step (or chord), carrying this task's errbacks to it."""
    for errback in task.request.errbacks or []:
        signature.link_error(errback)
    signature.apply_async()


def ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
