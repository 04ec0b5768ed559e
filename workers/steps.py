"""The step machinery every task of a turn runs through, so workers.tasks reads as the flow alone.

- `run_step_holding`: move the turn to `running`, publish `started`, run the step's body, and
  return its `finished`, to be shown with what comes next, after the checkpoint between them,
  which keeps it for a resume (Checkpoint.shown); turn any failure into StepFailed (the user's
  one sentence) or, for a broker outage, hand the message back (Reject with requeue) so the
  step runs again later.
- `start_step`: claim the step (shared.turns.claim_step_counting, which also counts the task's
  delivery: `stop_a_crashing_step`): a turn already done, failed or
  cancelled stops its flow here (Ignore), after making sure its log carries the outcome
  (shared.terminal_event); so does a delivery of a step the turn has moved past (its
  checkpoint is further on) or that a live worker runs. A stale delivery whose runner died
  after saving its checkpoint sends the turn on from that checkpoint.
- `advance`: save the checkpoint a finished step leaves (atomically with the turn's status); a
  step taken over by another worker meanwhile drops its result (Ignore).
- `settle_terminal_event`: publish a turn's terminal event (the outbox keeps it while the
  progress store is down).
- `forward`: send the next step with this task's errbacks, like Task.replace, but under a task
  id of its own, so Flower, metrics and traces see every step as the task it is; then let go
  of the turn (its runner is this process until the next step is sent).
- `step_here`: run the turn's next step in this task instead (workers.tasks says which ones):
  it still claims its place and saves its checkpoint, and it gets its own duration metric, log
  name, trace span and, where the watchdog holds the limits, time limit; what it saves is a
  message through the broker (publish, deliver, acknowledge, task events) and a worker's turn.
- `with_broker`: a turn-record operation that waits out a broker outage
  (TURNSTREAM_WORKER_BROKER_WAIT_S) before handing the message back.
- `fail_turn`: end a turn with one sentence (shared.failures): status `failed` and its `error`
  event. A failing step calls it itself, then raises StepFailed; the chain's errback calls it
  for what a step cannot report (a hard time limit). The first sentence recorded wins.
- `TurnTask`: the base of every task of a turn. Its delivery is counted, by the task's first
  claim in the same script, so a step whose worker keeps dying ends its turn
  (shared.deliveries, `stop_a_crashing_step`), and, in a pool that cannot interrupt a step, it
  hands its deadline to the watchdog (workers.time_limits)."""

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Callable, TypeVar

import redis
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded
from celery.signals import task_postrun
from kombu.exceptions import OperationalError
from opentelemetry import trace

from shared import deliveries, turns
from shared.breakers import UNAVAILABLE
from shared.events import ProgressEvent, StepEvent
from shared.failures import StepFailed, crash_cause, sentence, step_of, time_limit_cause, unexpected_cause
from shared.progress import Publisher
from shared.redis_stores import on_the_master
from shared.redaction import RedactingTask
from shared.settings import get_settings
from shared.terminal_event import terminal_event
from shared.turn_flow import Checkpoint, TurnRef, position, resume_turn, task_name, turn_of
from shared.vocabulary import (CALL_TOOL, COLLECT, DONE, EXECUTE, FAILED, FINISHED, REASON, RUNNING, STARTED,
                               SYNTHESIZE, TERMINAL_DEDUPE, Step, StepPhase, step_dedupe)
from workers import guarding, telemetry, time_limits
from workers.celery_app import app
from workers.mcp.client import ToolCallError
from workers.reasoners import ReasonerError

BROKER_POLL_S = time_limits.BROKER_POLL_S
log = logging.getLogger(__name__)
T = TypeVar("T")
S = TypeVar("S", bound=Mapping)
R = TypeVar("R")
Shown = tuple[ProgressEvent, str]  # an event and its dedupe name, as Publisher.publish_all takes them


def with_broker(func: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Call `func` (a turn-record operation), waiting out a broker outage until broker_deadline,
    then hand the message back (Reject with requeue) so the step runs again later: a step that
    outlived its limit waiting for the broker would otherwise fail its turn for the outage."""
    deadline = time_limits.broker_deadline()
    while True:
        try:
            return func(*args, **kwargs)
        except UNAVAILABLE as exc:
            if time.monotonic() + BROKER_POLL_S >= deadline:
                raise Reject(exc, requeue=True) from exc
            time.sleep(BROKER_POLL_S)


def start_step(turn: TurnRef, step: Step, task: str | None = None, round_: int | None = None,
               latest: int | None = None, claimed: bool = False) -> Publisher:
    """Claim the turn's `task` (default: the step itself) of round `round_` for this process and
    move the turn to `running` this step; stop here (Ignore) if it ended, moved past this task,
    or a live worker runs it. `latest`: the furthest checkpoint this task may still run at.
    `claimed`: the step before, in this task, claimed it with its checkpoint (advance's `then`)."""
    session_id, message_id = turn["session_id"], turn["message_id"]
    publisher = Publisher(session_id, message_id, fail_soft=True)
    if claimed:
        return publisher
    here = position(task or step, round_)
    status, orphaned_by, crashes = with_broker(_claim, session_id, message_id, step, here, latest)
    if status is None:  # no such turn: believe it only from the master (redis_stores.on_the_master)
        status, orphaned_by, crashes = with_broker(_claim_on_the_master, session_id, message_id, step, here, latest)
    stop_a_crashing_step(crashes)
    if status == RUNNING:
        return publisher
    if status in ("stale", "held"):
        skip_delivery(session_id, message_id, task or step, round_, status, orphaned_by)
    stop_ended_turn(publisher, step, status)
    return publisher


def _claim(session_id: str, message_id: str, step: Step, here: int, latest: int | None,
           r: redis.Redis | None = None) -> tuple[str | None, str | None, int | None]:
    """claim_step, counting this task's delivery if no attempt counted it yet (with_broker may
    call this again after a broker error)."""
    return turns.claim_step_counting(session_id, message_id, step, here, latest,
                                     deliveries.to_count(session_id, message_id), deliveries.mark_counted, r=r)


def _claim_on_the_master(session_id: str, message_id: str, step: Step, here: int,
                         latest: int | None) -> tuple[str | None, str | None, int | None]:
    with on_the_master("broker") as broker:
        return _claim(session_id, message_id, step, here, latest, r=broker)


def stop_a_crashing_step(crashes: int | None) -> None:
    """The task's first claim counted its delivery (shared.deliveries; `crashes`: how many of
    its deliveries died before, None if the claim counted none). A step that already killed
    TURNSTREAM_MAX_DELIVERIES workers does not run again: its turn fails, naming the crashes, and
    this delivery is not taken back."""
    delivery = deliveries.current()
    if crashes is None or delivery is None or not deliveries.exhausted(crashes):
        return
    delivery.counted = False
    step = recorded_step(delivery.session_id, delivery.message_id) or delivery.step  # it may be a later one
    fail_turn(delivery.session_id, delivery.message_id, step,
              sentence(step, crash_cause(delivery.task, crashes, delivery.doing)))
    raise Ignore()


def skip_delivery(session_id: str, message_id: str, task: str, round_: int | None, status: str,
                  orphaned_by: str | None) -> None:
    """A delivery with nothing to do: the turn moved past its task, or a live worker runs it. When
    the task's runner died between saving its checkpoint and sending the next step, send it now."""
    log.info("turn %s/%s: %s%s is %s; this delivery does nothing", session_id, message_id, task,
             f" (round {round_})" if round_ else "", "done already" if status == "stale" else "run by a live worker")
    if orphaned_by:
        record = with_broker(turns.get_turn, session_id, message_id)
        if record and record.payload and not record.final:
            sent = resume_turn(app, record.payload, record.checkpoint)
            log.warning("turn %s/%s: its worker %s died before sending the next step; sent %s from the checkpoint",
                        session_id, message_id, orphaned_by, sent)
    raise Ignore()


def advance(turn: TurnRef, here: int, checkpoint: Checkpoint, then: Step | None = None) -> None:
    """Save what the step at `here` left for the next one; drop it if another worker took over.
    `then`: the step this task runs next (the checkpoint's), claimed in the same round trip; its
    start_step is then given `claimed=True`."""
    session_id, message_id = turn["session_id"], turn["message_id"]
    result = with_broker(turns.save_checkpoint, session_id, message_id, here, checkpoint, claim_next=then)
    if result == "saved":
        return
    log.warning("turn %s/%s: checkpoint for %s not saved (%s); this delivery stops here", session_id, message_id,
                checkpoint.task, result or "gone")
    raise Ignore()


def stop_ended_turn(publisher: Publisher, step: Step, status: str | None) -> None:
    """The turn was cancelled, already finished by an earlier delivery, or is gone: skip the
    rest of its flow, after making sure the log carries the turn's terminal event."""
    log.info("turn %s/%s is %s: skipping %s and the steps after it",
             publisher.session_id, publisher.message_id, status or "gone", step)
    if status is not None:
        record = with_broker(turns.get_turn, publisher.session_id, publisher.message_id)
        # A done turn's last step finished, though its worker may have died before showing it
        # with `done` (finish_turn): shown here if so (by its dedupe name, never twice).
        last = [phase_event(SYNTHESIZE, FINISHED)] if record is not None and record.status == DONE else []
        settle_terminal_event(publisher, terminal_event(record), last)
    raise Ignore()


def settle_terminal_event(publisher: Publisher, event: ProgressEvent | None, shown_before: Sequence[Shown] = ()) -> None:
    """Publish the turn's terminal event, after `shown_before` in the same round trip (the last
    step's `finished`). While the progress store is down (or its breaker open) the fail-soft
    publisher keeps them in the outbox, behind the turn's other waiting events, and the outbox
    publishes them once the store is back (shared.outbox); an open stream also finds the
    terminal event at its next heartbeat."""
    publisher.publish_all([*shown_before, *([(event, TERMINAL_DEDUPE)] if event is not None else [])])


def held(shown: Sequence[Shown]) -> tuple[tuple[str, str], ...]:
    """Step events held to show with the next step, as a checkpoint keeps them (Checkpoint.shown)."""
    return tuple((event.model_dump_json(exclude_none=True), dedupe) for event, dedupe in shown)


def phase_event(step: Step, phase: StepPhase, round_: int | None = None,
                duration_ms: float | None = None) -> tuple[StepEvent, str]:
    """A step's `started` or `finished` event and its dedupe name."""
    return StepEvent(step=step, status=phase, round=round_, duration_ms=duration_ms), step_dedupe(step, phase, round_)


def run_step_holding(step: Step, turn: S, body: Callable[[S, Publisher], R], round_: int | None = None,
                     claimed: bool = False, shown_with_start: Sequence[Shown] = ()) -> tuple[R, list[Shown]]:
    """Run a step: claim it, publish `started` (with `shown_with_start`, the step before's held
    `finished`, in the same round trip), run `body`. The step's `finished` event is returned, not
    published: the caller shows it with what comes next (the next step's `started`, the turn's
    `done`), after the checkpoint between them, in one round trip. Both are true by then. The checkpoint keeps it too
    (Checkpoint.shown): a resume from it shows it first, and a done turn's last `finished` is
    shown with `done` by whichever delivery finds the turn done (stop_ended_turn), so a worker
    dying in between loses no step."""
    publisher = start_step(turn, step, round_=round_, claimed=claimed)
    publisher.publish_all([*shown_with_start, phase_event(step, STARTED, round_)])
    started = time.perf_counter()
    try:
        result = body(turn, publisher)
    except (Reject, Ignore):
        raise
    except Exception as exc:
        failure = step_failure(step, turn, exc)
        fail_turn(turn["session_id"], turn["message_id"], failure.step, str(failure))
        raise failure from exc
    return result, [phase_event(step, FINISHED, round_, ms_since(started))]


def step_failure(step: Step, turn: TurnRef, exc: Exception) -> StepFailed:
    """What went wrong in a step, as the sentence its turn ends with. A broker outage is no
    failure of the turn: the message goes back (Reject) and the step runs again later."""
    if isinstance(exc, StepFailed):
        return exc
    if isinstance(exc, UNAVAILABLE) and getattr(exc, "store", None) == "broker":
        # The broker holds the turn (history, status): its outage is no reason to fail the turn.
        # The message goes back (now, or after the visibility timeout: shared.celery_config) and the step runs again.
        log.warning("%s of %s/%s hit a broker outage; handing the step back", step,
                    turn["session_id"], turn["message_id"])
        raise Reject(exc, requeue=True) from exc
    if isinstance(exc, SoftTimeLimitExceeded):
        return StepFailed(step, time_limit_cause(get_settings().task_soft_time_limit_s,
                                                 "TURNSTREAM_TASK_SOFT_TIME_LIMIT_S"))
    if isinstance(exc, (ReasonerError, ToolCallError, guarding.PermissionUnavailable, *UNAVAILABLE)):
        return StepFailed(step, str(exc))
    log.exception("%s failed", step)
    return StepFailed(step, unexpected_cause(exc))


def fail_turn(session_id: str, message_id: str, step: str | None, message: str) -> None:
    """Mark the turn failed with `message` and publish its `error` event. The first failure
    recorded wins: a turn already final keeps its outcome, which is published (once) instead."""
    record = with_broker(turns.get_turn, session_id, message_id)
    if record is not None and not record.final:
        with_broker(turns.update_turn, session_id, message_id, status=FAILED, error=message, step=step or "")
        log.warning("turn %s/%s failed: %s", session_id, message_id, message)
        record = with_broker(turns.get_turn, session_id, message_id)
    settle_terminal_event(Publisher(session_id, message_id, fail_soft=True), terminal_event(record))


class TurnTask(RedactingTask):
    """Every task of a turn runs inside two guards: its delivery is counted, so a step whose
    worker keeps dying ends its turn (shared.deliveries), and where the pool cannot interrupt
    a step, the watchdog holds its deadline (workers.time_limits). It is a RedactingTask, so its
    results and `inspect` view carry no user text (shared.redaction)."""

    def __call__(self, *args, **kwargs):
        ref = next((a for a in args if isinstance(a, Mapping) and "session_id" in a and "message_id" in a), None)
        if ref is None:
            return super().__call__(*args, **kwargs)
        session_id, message_id = ref["session_id"], ref["message_id"]
        step, tag, doing = step_tag(self.name, args)
        # Celery's limits count from here too. The clock runs on until the task is over (celery_app,
        # task_postrun): Celery sends a chain's next task after this returns, and that send must
        # not wait into the limit either. An errback run in between stops it first (turn_failed).
        time_limits.started(task_start=True)
        # Counted by the task's first claim, in its script (stop_a_crashing_step), before any step runs.
        deliveries.starting(deliveries.Delivery(session_id, message_id, tag, self.name, step, doing))
        task_id = self.request.id or tag
        time_limits.watch(task_id, session_id, message_id, step)
        try:
            return super().__call__(*args, **kwargs)
        except Reject:
            let_go_on_hand_back(session_id, message_id)
            raise
        finally:
            time_limits.unwatch(task_id)
            delivery = deliveries.finished()
            if delivery is not None and delivery.counted:
                self.end_delivery_when_over(session_id, message_id, tag)

    def end_delivery_when_over(self, session_id: str, message_id: str, tag: str) -> None:
        """Count the delivery off once the task is over (task_postrun, below): Celery sends a
        chain's next step after __call__ returns, and that send must not wait behind a round
        trip of bookkeeping. Called outside a worker (no postrun follows), it ends here."""
        if self.request.called_directly:
            deliveries.end_or_owe(session_id, message_id, tag)
        else:
            self.request.turnstream_delivery = (session_id, message_id, tag)


@task_postrun.connect
def _end_delivery(task=None, **_: object) -> None:
    """The task is over and its chain's next step sent: its delivery no longer counts (TurnTask).
    A worker that dies after that send and before this counts one crash for a step that did its
    work: harmless unless it happens TURNSTREAM_MAX_DELIVERIES times to the same step."""
    delivery = getattr(getattr(task, "request", None), "turnstream_delivery", None)
    if delivery:
        task.request.turnstream_delivery = None
        deliveries.end_or_owe(*delivery)


def recorded_step(session_id: str, message_id: str) -> str | None:
    """The step the turn's record says runs (claim_step writes it): a task may run several steps
    (workers.tasks), so its name does not say which one failed. None if the broker cannot say."""
    try:
        return turns.turn_step(session_id, message_id)
    except (redis.RedisError, *UNAVAILABLE) as exc:
        log.warning("turn %s/%s: could not read its step (%r); naming it by its task", session_id, message_id, exc)
        return None


def step_tag(task: str, args: tuple) -> tuple[Step, str, str | None]:
    """The user-facing step, the tag a delivery is counted under, and what a crash interrupted."""
    name = task.rpartition(".")[2]
    if name == CALL_TOOL:
        call = args[1]
        return EXECUTE, f"{CALL_TOOL}-{call['call_id']}", f"while calling {call['tool']}"
    turn = turn_of(args)
    if name in (REASON, EXECUTE, COLLECT):
        return step_of(name), f"{name}-{len(turn.get('rounds') or []) + 1}", None
    return step_of(name), name, None


def let_go_on_hand_back(session_id: str, message_id: str) -> None:
    """A step handed back (Reject) no longer holds its turn: its next delivery, in whichever
    process, takes it over at once (shared.turns.let_go). Best effort: the broker is usually
    still down then, and the hold lapses by itself a step time limit after the claim."""
    try:
        turns.let_go(session_id, message_id)
    except (redis.RedisError, *UNAVAILABLE) as exc:
        log.info("turn %s/%s: could not let go of it on hand-back (%r)", session_id, message_id, exc)


def fail_past_time_limit(watched: time_limits.Watched, limit_s: float) -> None:
    """The watchdog's verdict on a step its pool could not interrupt."""
    fail_turn(watched.session_id, watched.message_id, watched.step,
              sentence(watched.step, time_limit_cause(limit_s)))


def forward(task, signature, turn: TurnRef, here: int, let_go: bool = True) -> None:
    """Send the turn's next step (or chord), carrying this task's errbacks to it, then let go of
    the turn's step at `here` (`let_go=False`: the next step takes the turn over, as `reason`
    does from discover; the round trip is saved). While the broker is down the send waits for it like `with_broker`
    (never into the step's time limit); past that the message goes back (Reject), the step lets
    go of the turn (TurnTask) with this process still named its runner, and its next delivery,
    finding the turn past its step, sends it on from the checkpoint `advance` saved
    (shared.turns.claim_step: 'stale' with the runner)."""
    for errback in task.request.errbacks or []:
        signature.link_error(errback)
    try:
        # The app's publish retry policy (workers.celery_app) waits for the broker, never into
        # the step's time limit. (Not passed here: a chord would carry it in its message.)
        signature.apply_async()
    except (OperationalError, *UNAVAILABLE) as exc:
        log.warning("turn %s/%s: could not send its next step (%r); handing the step back", turn["session_id"],
                    turn["message_id"], exc)
        raise Reject(exc, requeue=True) from exc
    if let_go:
        release(turn, here)


@contextmanager
def step_here(task, turn: TurnRef, step: Step) -> Iterator[None]:
    """Run the turn's next step, `step`, in `task`: what follows in the block is that step.
    Flower sees one task; the metrics, logs and traces see the step it is."""
    task_id = task.request.id
    telemetry.switch_step(task_id, step)
    time_limits.watch(task_id, turn["session_id"], turn["message_id"], step)  # a deadline of its own
    time_limits.started(task_start=False)
    with _tracer.start_as_current_span(f"run/{task_name(step)}"):
        yield


_tracer = trace.get_tracer(__name__)


def release(turn: TurnRef, here: int) -> None:
    """This process no longer runs the turn's step at `here` (best effort: the next step takes
    the turn over anyway, and a runner left behind is only acted on if its process dies)."""
    try:
        turns.release_step(turn["session_id"], turn["message_id"], here)
    except UNAVAILABLE as exc:
        log.warning("turn %s/%s not released: %s", turn["session_id"], turn["message_id"], exc)


def ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
