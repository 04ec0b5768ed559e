"""The steps of a turn: discover -> reason -> [execute -> reason]* -> synthesize.

The web tier sends discover | reason. `reason` asks the reasoner for tool calls and hands over
to `execute` (a chord: one `call_tool` per call, in parallel on the tools queue, then `collect`),
which loops back to `reason` until the reasoner is done or TURNSTREAM_MAX_TOOL_ROUNDS is
reached; then `synthesize` streams the answer. A step hands over by sending the next one with
its own errbacks (`forward`), like Task.replace does, but under a task id of its own, so Flower,
metrics and traces see every step as the task it is. Every step publishes `started` and
`finished` (reason and execute with their round) and keeps the turn's status record current.

Delivery is at least once, so every step is safe to run twice:
- events carry dedupe names, so a redelivered step re-publishes nothing the browser has;
- a step first moves the turn to `running`, which fails for a turn that is already done,
  failed or cancelled: then the step does nothing and stops the turn's flow (Ignore), so a
  cancelled turn skips its remaining steps and a finished one is never answered twice;
- the answer is written by one atomic transition to `done`, and its `done` event is
  published once (shared.outcome).
Progress is fail-soft (a dead progress Redis drops events, the turn goes on); the broker
holds the turn itself, so a step waits for it (up to TURNSTREAM_WORKER_BROKER_WAIT_S) and
then hands its message back for redelivery.

A failing tool is an error result the reasoner sees. A failing step ends its turn itself: it
records the failure as one sentence (shared.failures) and publishes the `error` event, then
raises StepFailed. The chain's errback (`turn_failed`), which every task carries, ends the turn
the same way for what a step cannot report itself (a hard time limit); the first sentence
recorded wins. Two guards sit around every step (TurnTask): a delivery counter fails a turn
whose message keeps killing its worker (shared.deliveries), and in a pool that cannot
interrupt a step, a watchdog fails a turn whose step outlives its time limit
(workers.time_limits)."""

import functools
import json
import logging
import time
from typing import Callable, TypeVar

from celery import Task, chord, group
from celery.exceptions import ChordError, Ignore, Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from kombu.exceptions import OperationalError

from shared import deliveries, history, turns
from shared.breakers import UNAVAILABLE
from shared.celery_config import task_name
from shared.events import StepEvent, ToolEvent
from shared.failures import (StepFailed, crash_cause, sentence, step_of, time_limit_cause,
                             unexpected_cause)
from shared.outcome import publish_outcome
from shared.progress import Publisher, TokenCoalescer
from shared.settings import get_settings
from workers import guarding, time_limits
from workers.celery_app import app
from workers.mcp_client import ToolCallError, get_hub
from workers.reasoners import ReasonerError, TurnContext, get_reasoner

PREVIEW_CHARS = 200
BROKER_POLL_S = 0.5
log = logging.getLogger(__name__)
T = TypeVar("T")


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


def start_step(turn: dict, step: str) -> Publisher:
    """Move the turn to `running` this step; stop here (Ignore) if it already ended."""
    session_id, message_id = turn["session_id"], turn["message_id"]
    publisher = Publisher(session_id, message_id, fail_soft=True)
    status = with_broker(turns.update_turn, session_id, message_id, status=turns.RUNNING, step=step)
    if status != turns.RUNNING:
        stop_ended_turn(publisher, step, status)
    return publisher


def stop_ended_turn(publisher: Publisher, step: str, status: str | None) -> None:
    """The turn was cancelled, already finished by an earlier delivery, or is gone: skip the
    rest of its flow, after making sure the log carries the turn's outcome."""
    log.info("turn %s/%s is %s: skipping %s and the steps after it",
             publisher.session_id, publisher.message_id, status or "gone", step)
    if status is not None:
        record = with_broker(turns.get_turn, publisher.session_id, publisher.message_id)
        publish_outcome(publisher.session_id, publisher.message_id, record, publisher)
    raise Ignore()


def run_step(step: str, turn: dict, body: Callable[[dict, Publisher], dict], round_: int | None = None) -> dict:
    publisher = start_step(turn, step)
    tag = f"{step}-{round_}" if round_ else step
    publisher.publish(StepEvent(step=step, status="started", round=round_), dedupe=f"{tag}-started")
    started = time.perf_counter()
    try:
        result = body(turn, publisher)
    except (Reject, Ignore):
        raise
    except Exception as exc:
        failure = step_failure(step, turn, exc)
        fail_turn(turn["session_id"], turn["message_id"], failure.step, str(failure))
        raise failure from exc
    publisher.publish(StepEvent(step=step, status="finished", round=round_, duration_ms=_ms_since(started)),
                      dedupe=f"{tag}-finished")
    return result


def step_failure(step: str, turn: dict, exc: Exception) -> StepFailed:
    """What went wrong in a step, as the sentence its turn ends with. A broker outage is no
    failure of the turn: the message goes back (Reject) and the step runs again later."""
    if isinstance(exc, StepFailed):
        return exc
    if isinstance(exc, UNAVAILABLE) and getattr(exc, "role", None) == "broker":
        # The broker holds the turn (history, status): its outage is no reason to fail the turn.
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
    if with_broker(turns.turn_status, session_id, message_id) not in turns.FINAL_STATES:
        with_broker(turns.update_turn, session_id, message_id, status=turns.FAILED, error=message, step=step or "")
        log.warning("turn %s/%s failed: %s", session_id, message_id, message)
    record = with_broker(turns.get_turn, session_id, message_id)
    publish_outcome(session_id, message_id, record, Publisher(session_id, message_id, fail_soft=True))


class TurnTask(Task):
    """Every step of a turn runs inside two guards: its delivery is counted, so a step whose
    worker keeps dying ends its turn (shared.deliveries), and where the pool cannot interrupt
    a step, the watchdog holds its deadline (workers.time_limits)."""

    def __call__(self, *args, **kwargs):
        ref = next((a for a in args if isinstance(a, dict) and "session_id" in a and "message_id" in a), None)
        if ref is None:
            return super().__call__(*args, **kwargs)
        session_id, message_id = ref["session_id"], ref["message_id"]
        step, tag, doing = step_tag(self.name, args)
        crashes = with_broker(deliveries.begin, session_id, message_id, tag)
        if deliveries.exhausted(crashes):
            fail_turn(session_id, message_id, step, sentence(step, crash_cause(step, crashes, doing)))
            raise Ignore()
        task_id = self.request.id or tag
        time_limits.watch(task_id, session_id, message_id, step)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            time_limits.unwatch(task_id)
            _end_delivery(session_id, message_id, tag)


def step_tag(task: str, args: tuple) -> tuple[str, str, str | None]:
    """The user-facing step, the tag a delivery is counted under, and what a crash interrupted."""
    name = task.rpartition(".")[2]
    if name == "call_tool":
        call = args[1]
        return "execute", f"call_tool-{call['call_id']}", f"while calling {call['tool']}"
    turn = args[-1]
    if name in ("reason", "execute", "collect"):
        return step_of(name), f"{name}-{len(turn.get('rounds') or []) + 1}", None
    return step_of(name), name, None


def _end_delivery(session_id: str, message_id: str, tag: str) -> None:
    try:
        with_broker(deliveries.end, session_id, message_id, tag)
    except Exception as exc:  # noqa: BLE001 - the step's own outcome matters more than its count
        log.warning("could not count the end of %s for %s/%s: %r", tag, session_id, message_id, exc)


def fail_past_time_limit(watched: time_limits.Watched, limit_s: float) -> None:
    """The watchdog's verdict on a step its pool could not interrupt."""
    fail_turn(watched.session_id, watched.message_id, watched.step,
              sentence(watched.step, time_limit_cause(limit_s)))


def forward(task, signature) -> None:
    """Send the turn's next step (or chord), carrying this task's errbacks to it."""
    for errback in task.request.errbacks or []:
        signature.link_error(errback)
    signature.apply_async()


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _context(turn: dict) -> TurnContext:
    return TurnContext.from_turn(turn, get_settings().tool_result_chars)


# --- discover ----------------------------------------------------------------------------
def _discover(turn: dict, publisher: Publisher) -> dict:
    hub = get_hub()
    catalogue = hub.list_tools()
    if not catalogue and hub.server_errors:
        raise StepFailed("discover", "no MCP server answered (" + "; ".join(hub.server_errors.values()) + ")")
    allowed = guarding.preflight(guarding.principal(turn), catalogue)
    public = [{k: t[k] for k in ("name", "description", "input_schema", "policy")} for t in allowed]
    return {**turn, "tools": public, "history": history.recall(turn["session_id"]), "rounds": []}


@app.task(name=task_name("discover"), base=TurnTask)
def discover(turn: dict) -> dict:
    return run_step("discover", turn, _discover)


# --- reason --------------------------------------------------------------------------------
def _reason(turn: dict, publisher: Publisher) -> dict:
    """The reasoner's next calls. A call to a tool it was not offered still goes to `execute`,
    where the guards deny it or the catalogue does not know it: either way, the reasoner sees why."""
    round_ = len(turn["rounds"]) + 1
    calls = [{**call, "call_id": f"r{round_}c{i}"} for i, call in enumerate(get_reasoner().decide(_context(turn)))]
    return {**turn, "pending": calls}


@app.task(name=task_name("reason"), bind=True, base=TurnTask)
def reason(self, turn: dict) -> None:
    round_ = len(turn["rounds"]) + 1
    turn = run_step("reason", turn, _reason, round_=round_)
    forward(self, execute.si(turn) if turn["pending"] else synthesize.si(turn))


# --- execute -------------------------------------------------------------------------------
def _tool_event(call: dict, outcome: dict, duration_ms: float, guard: guarding.GuardedCall | None) -> ToolEvent:
    preview = json.dumps(outcome.get("result", ""), ensure_ascii=False)[:PREVIEW_CHARS]
    return ToolEvent(call_id=call["call_id"], tool=call["tool"], args=call["args"], status=outcome["status"],
                     duration_ms=duration_ms, result_preview=preview, error=outcome.get("error"),
                     permission=guard.permission if guard else None, cache=guard.cache if guard else None)


@app.task(name=task_name("call_tool"), base=TurnTask)
def call_tool(ref: dict, call: dict) -> dict:
    """One tool call behind the guards. Never raises for a tool's failure: the outcome says it."""
    publisher = Publisher(ref["session_id"], ref["message_id"], fail_soft=True)
    started = time.perf_counter()
    outcome = {**call, "started_at": time.time()}
    guard = None
    if call.get("error"):
        outcome.update(status="error")
    else:
        hub = get_hub()
        late: list[SoftTimeLimitExceeded] = []
        try:
            tool = hub.resolve(call["tool"])
            run = functools.partial(_noting_time_limit, late, hub.call_tool, call["tool"], caller=guarding.caller(ref))
            guard = guarding.guarded(guarding.principal(ref), tool, call["args"], run)
            if late:
                raise late[0]  # the execution cache reported it as the tool's error: it is the step's
            outcome.update(status=guard.status)
            outcome.update({"result": guard.result} if guard.status == "ok" else {"error": guard.error})
        except SoftTimeLimitExceeded as exc:
            failure = step_failure("execute", ref, exc)
            fail_turn(ref["session_id"], ref["message_id"], failure.step, str(failure))
            raise failure from exc
        except (ToolCallError, guarding.PermissionUnavailable) as exc:
            outcome.update(status="error", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure is the reasoner's to see, not a dead turn
            log.exception("tool call %s failed", call["tool"])
            outcome.update(status="error", error=f"{type(exc).__name__}: {exc}")
    outcome["ended_at"] = time.time()
    publisher.publish(_tool_event(call, outcome, _ms_since(started), guard), dedupe=f"tool-{call['call_id']}")
    return outcome


def _noting_time_limit(late: list, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Run a tool call, noting a soft time limit that fired in it even when the MCP client
    reported it as the call's own failure."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, SoftTimeLimitExceeded):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            late.append(cause)
        raise


@app.task(name=task_name("execute"), bind=True, base=TurnTask)
def execute(self, turn: dict) -> None:
    """Fan the pending calls out as a chord: each on its own task (and tools worker), then collect."""
    round_ = len(turn["rounds"]) + 1
    publisher = start_step(turn, "execute")
    publisher.publish(StepEvent(step="execute", status="started", round=round_), dedupe=f"execute-{round_}-started")
    ref = {k: turn[k] for k in ("session_id", "message_id", "user", "tenant", "roles")}
    calls = [{k: c[k] for k in ("call_id", "tool", "args", "error", "model_call_id") if k in c} for c in turn["pending"]]
    state = {**turn, "pending": [], "execute_started_at": time.time()}
    # Each call carries the turn's errbacks too: a call killed by its time limit ends the turn
    # at once, not only once the chord notices (Celery links a chord's errbacks to its body only).
    header = [call_tool.si(ref, c) for c in calls]
    for signature in header:
        for errback in self.request.errbacks or []:
            signature.link_error(errback)
    forward(self, chord(group(header), collect.s(state)))


@app.task(name=task_name("collect"), bind=True, base=TurnTask)
def collect(self, results: list[dict], turn: dict) -> None:
    round_ = len(turn["rounds"]) + 1
    duration_ms = round((time.time() - turn.pop("execute_started_at")) * 1000, 2)
    start_step(turn, "execute").publish(
        StepEvent(step="execute", status="finished", round=round_, duration_ms=duration_ms),
        dedupe=f"execute-{round_}-finished")
    turn = {**turn, "rounds": [*turn["rounds"], {"results": results}]}
    done = len(turn["rounds"]) >= get_settings().max_tool_rounds
    forward(self, synthesize.si(turn) if done else reason.si(turn))


# --- synthesize ----------------------------------------------------------------------------
def _synthesize(turn: dict, publisher: Publisher) -> dict:
    coalescer = TokenCoalescer(publisher)
    text = get_reasoner().answer(_context(turn), coalescer.add)
    coalescer.flush()
    used = sorted({o["tool"] for r in turn["rounds"] for o in r["results"] if o.get("status") == "ok"})
    return {"session_id": turn["session_id"], "message_id": turn["message_id"], "prompt": turn["prompt"],
            "answer": text, "tools_used": used}


def finish_turn(result: dict) -> dict:
    """The terminal `done` event comes after synthesize's `finished`, so the stream shows every step.

    Only the delivery whose transition to `done` wins writes the answer and the history; any
    other (a redelivery, a turn cancelled meanwhile) re-publishes the recorded outcome, which
    the log already has."""
    session_id, message_id = result["session_id"], result["message_id"]
    status = with_broker(turns.update_turn, session_id, message_id, status=turns.DONE, answer=result["answer"])
    if status == turns.DONE:
        history.remember(session_id, result["prompt"], result["answer"], result["tools_used"])
    record = with_broker(turns.get_turn, session_id, message_id)
    publish_outcome(session_id, message_id, record, Publisher(session_id, message_id, fail_soft=True))
    return result


@app.task(name=task_name("synthesize"), base=TurnTask)
def synthesize(turn: dict) -> dict:
    return finish_turn(run_step("synthesize", turn, _synthesize))


# --- the chain's errback ---------------------------------------------------------------------
def lost_to_an_outage(exc: BaseException) -> bool:
    """Did the task fail because the broker (queue or result backend) was unreachable?
    A chord reports a failed part as ChordError, naming the part's exception in its text."""
    if isinstance(exc, (*UNAVAILABLE, OperationalError)):
        return True
    return isinstance(exc, ChordError) and any(name in str(exc) for name in ("ConnectionError", "TimeoutError"))


@app.task(name=task_name("turn_failed"))
def turn_failed(request, exc, traceback, session_id: str, message_id: str) -> None:
    """Ends a turn whose task failed: status `failed` and one `error` event, whatever failed.
    Celery runs it in the worker where the task failed (for a hard time limit, in the process
    that enforced it), with the exception as the result backend would store it."""
    if lost_to_an_outage(exc):
        # Not the turn's fault: a broker outage broke its flow (a chord counter, a send). The
        # turn stays running; with no progress for a visibility timeout, it is sent again
        # (shared.redelivery).
        log.warning("turn %s/%s lost its flow to a broker outage (%s); left for redelivery", session_id,
                    message_id, exc)
        return
    if isinstance(exc, ChordError) and str(exc).startswith("Dependency "):
        # A tool call failed (a time limit): it carries this errback too and reports its own
        # exception, which says more than the chord's summary of it.
        log.info("turn %s/%s: %s; the call reports it", session_id, message_id, exc)
        return
    step = step_of(getattr(exc, "step", None) or getattr(request, "task", None))
    fail_turn(session_id, message_id, step, errback_sentence(step, exc))


def errback_sentence(step: str | None, exc: BaseException) -> str:
    if isinstance(exc, StepFailed):
        return str(exc)  # the step recorded it already; this only matters if that record was lost
    if isinstance(exc, TimeLimitExceeded):
        limit = exc.args[0] if exc.args and isinstance(exc.args[0], (int, float)) else get_settings().task_time_limit_s
        return sentence(step, time_limit_cause(limit))
    return sentence(step, unexpected_cause(exc))
