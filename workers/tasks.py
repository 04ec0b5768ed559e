"""The steps of a turn: discover -> reason -> [execute -> reason]* -> synthesize.

The web tier sends discover | reason. `reason` asks the reasoner for tool calls and hands over
to `execute` (a chord: one `call_tool` per call, in parallel on the tools queue, then `collect`),
which loops back to `reason` until the reasoner is done or TURNSTREAM_MAX_TOOL_ROUNDS is
reached; then `synthesize` streams the answer. A step hands over by sending the next one
itself; how a step runs, reports and hands over is workers.steps. Every step publishes
`started` and `finished` (reason and execute with their round) and keeps the turn's status
record current.

Delivery is at least once, so every step is safe to run twice:
- events carry dedupe names, so a redelivered step re-publishes nothing the browser has;
- a step first moves the turn to `running`, which fails for a turn that is already done,
  failed or cancelled: then the step does nothing and stops the turn's flow (Ignore), so a
  cancelled turn skips its remaining steps and a finished one is never answered twice;
- the answer is written by one atomic transition to `done`, and its `done` event is
  published once (shared.terminal_event).
Progress is fail-soft (a dead progress Redis drops events, the turn goes on); the broker
holds the turn itself, so a step waits for it (up to TURNSTREAM_WORKER_BROKER_WAIT_S) and
then hands its message back for redelivery.

A failing tool is an error result the reasoner sees. A failing step ends its turn itself with
one sentence (workers.steps.fail_turn) and raises StepFailed; the chain's errback
(`turn_failed`), which every task and every tool call carries, ends the turn the same way for
what a step cannot report itself (a hard time limit). Every task runs as a TurnTask: its
deliveries are counted and, in the threads pool, its time limit watched (workers.steps).

Only `call_tool` stores its result (its chord reads it); every other step hands its state on in
the next step's message and its record is the turn's, so it stores none (ignore_result)."""

import functools
import json
import logging
import time
from typing import Callable, TypeVar

from celery import chord, group
from celery.exceptions import ChordError, SoftTimeLimitExceeded, TimeLimitExceeded
from kombu.exceptions import OperationalError
from redis import RedisError

from shared import defaults, history, turns
from shared.breakers import UNAVAILABLE
from shared.events import ToolEvent
from shared.failures import sentence, step_of, time_limit_cause, unexpected_cause
from shared.progress import DeltaCoalescer, Publisher
from shared.settings import get_settings
from shared.terminal_event import publish_terminal_event, terminal_event
from shared.turn_flow import FinishedTurn, ToolCall, ToolOutcome, TurnRef, TurnState, task_name
from shared.vocabulary import (CALL_TOOL, COLLECT, DISCOVER, DONE, EXECUTE, FINISHED, REASON, REPUBLISH_TERMINAL_EVENT,
                               STARTED, SYNTHESIZE, TOOL_ERROR, TOOL_OK, TOOL_RUNNING, TOOL_STARTED, TURN_FAILED,
                               tool_dedupe, tool_running_dedupe, tool_started_dedupe)
from workers import guarding
from workers.celery_app import app
from workers.mcp.client import Progress, ToolCallError, mcp_client
from workers.reasoners import TurnContext, get_reasoner
from workers.steps import (StepFailed, TurnTask, fail_turn, forward, ms_since, publish_phase, run_step,
                           settle_terminal_event, start_step, step_failure, with_broker)

PREVIEW_CHARS = 200
log = logging.getLogger(__name__)
T = TypeVar("T")


def _context(turn: TurnState) -> TurnContext:
    return TurnContext.from_turn(turn, get_settings().tool_result_chars)


def _round(turn: TurnState) -> int:
    """The round a reason or execute step of this turn belongs to: 1, 2, ..."""
    return len(turn["rounds"]) + 1


# --- discover ----------------------------------------------------------------------------
def _discover(turn: TurnState, publisher: Publisher) -> TurnState:
    client = mcp_client()
    catalogue = client.list_tools()
    if not catalogue and client.server_errors:
        raise StepFailed(DISCOVER, "no MCP server answered (" + "; ".join(client.server_errors.values()) + ")")
    allowed = guarding.preflight(guarding.principal(turn), catalogue)
    public = [{k: t[k] for k in ("name", "description", "input_schema", "cache_declaration")} for t in allowed]
    return {**turn, "tools": public, "history": history.recall(turn["session_id"], guarding.principal(turn).owner),
            "rounds": []}


@app.task(name=task_name(DISCOVER), base=TurnTask, ignore_result=True)
def discover(turn: TurnState) -> TurnState:
    return run_step(DISCOVER, turn, _discover)


# --- reason --------------------------------------------------------------------------------
def _reason(turn: TurnState, publisher: Publisher) -> TurnState:
    """The reasoner's next calls. A call to a tool it was not offered still goes to `execute`,
    where the guards deny it or the catalogue does not know it: either way, the reasoner sees why."""
    round_ = _round(turn)
    calls = [{**call, "call_id": f"r{round_}c{i}"} for i, call in enumerate(get_reasoner().decide(_context(turn)))]
    return {**turn, "pending": calls}


@app.task(name=task_name(REASON), bind=True, base=TurnTask, ignore_result=True)
def reason(self, turn: TurnState) -> None:
    turn = run_step(REASON, turn, _reason, round_=_round(turn))
    forward(self, execute.si(turn) if turn["pending"] else synthesize.si(turn))


# --- execute -------------------------------------------------------------------------------
def _progress_publisher(publisher: Publisher, call: ToolCall) -> Progress:
    """Publishes a call's progress reports as `running` events, numbered so that a redelivered
    call publishes none of them twice."""
    published = 0

    def report(progress: float, total: float | None, message: str | None) -> None:
        nonlocal published
        published += 1
        publisher.publish(ToolEvent(call_id=call["call_id"], tool=call["tool"], status=TOOL_RUNNING,
                                    progress=progress, total=total, message=message),
                          dedupe=tool_running_dedupe(call["call_id"], published))
    return report


def _tool_event(outcome: ToolOutcome, duration_ms: float, guard: guarding.GuardedCall | None) -> ToolEvent:
    preview = json.dumps(outcome.get("result", ""), ensure_ascii=False)[:PREVIEW_CHARS]
    return ToolEvent(call_id=outcome["call_id"], tool=outcome["tool"], args=outcome["args"], status=outcome["status"],
                     duration_ms=duration_ms, result_preview=preview, error=outcome.get("error"),
                     permission=guard.permission if guard else None, cache=guard.cache if guard else None)


@app.task(name=task_name(CALL_TOOL), base=TurnTask)
def call_tool(ref: TurnRef, call: ToolCall) -> ToolOutcome:
    """One tool call behind the guards. Never raises for a tool's failure: the outcome says it."""
    publisher = Publisher(ref["session_id"], ref["message_id"], fail_soft=True)
    started = time.perf_counter()
    outcome: ToolOutcome = {**call, "status": TOOL_ERROR, "started_at": time.time(), "ended_at": 0.0}
    guard = None
    if not call.get("error"):
        client = mcp_client()
        late: list[SoftTimeLimitExceeded] = []
        try:
            tool = client.resolve(call["tool"])
            run = functools.partial(_noting_time_limit, late, client.call_tool, call["tool"],
                                    caller=guarding.caller(ref), on_progress=_progress_publisher(publisher, call))
            guard = guarding.guarded_tool_call(guarding.principal(ref), tool, call["args"], run)
            if late:
                raise late[0]  # the execution cache reported it as the tool's error: it is the step's
            outcome.update(status=guard.status)
            outcome.update({"result": guard.result} if guard.status == TOOL_OK else {"error": guard.error})
        except SoftTimeLimitExceeded as exc:
            failure = step_failure(EXECUTE, ref, exc)
            fail_turn(ref["session_id"], ref["message_id"], failure.step, str(failure))
            raise failure from exc
        except (ToolCallError, guarding.PermissionUnavailable) as exc:
            outcome.update(error=str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure is the reasoner's to see, not a dead turn
            log.exception("tool call %s failed", call["tool"])
            outcome.update(error=f"{type(exc).__name__}: {exc}")
    outcome["ended_at"] = time.time()
    publisher.publish(_tool_event(outcome, ms_since(started), guard), dedupe=tool_dedupe(call["call_id"]))
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


@app.task(name=task_name(EXECUTE), bind=True, base=TurnTask, ignore_result=True)
def execute(self, turn: TurnState) -> None:
    """Fan the pending calls out as a chord: each on its own task (and tools worker), then collect."""
    publisher = start_step(turn, EXECUTE)
    publish_phase(publisher, EXECUTE, STARTED, _round(turn))
    ref: TurnRef = {k: turn[k] for k in TurnRef.__annotations__}
    calls = [{k: c[k] for k in ToolCall.__annotations__ if k in c} for c in turn["pending"]]
    state: TurnState = {**turn, "pending": [], "execute_started_at": time.time()}
    for call in calls:  # shown at once, before the guards and however long the tools queue is
        publisher.publish(ToolEvent(call_id=call["call_id"], tool=call["tool"], args=call["args"], status=TOOL_STARTED),
                          dedupe=tool_started_dedupe(call["call_id"]))
    # Each call carries the turn's errbacks too: a call killed by its time limit ends the turn
    # itself (Celery links a chord's errbacks to its body only, which hears of it as a ChordError).
    header = [call_tool.si(ref, c) for c in calls]
    for signature in header:
        for errback in self.request.errbacks or []:
            signature.link_error(errback)
    forward(self, chord(group(header), collect.s(state)))


@app.task(name=task_name(COLLECT), bind=True, base=TurnTask, ignore_result=True)
def collect(self, results: list[ToolOutcome], turn: TurnState) -> None:
    duration_ms = round((time.time() - turn.pop("execute_started_at")) * 1000, 2)
    publish_phase(start_step(turn, EXECUTE), EXECUTE, FINISHED, _round(turn), duration_ms)
    turn = {**turn, "rounds": [*turn["rounds"], {"results": results}]}
    done = len(turn["rounds"]) >= get_settings().max_tool_rounds
    forward(self, synthesize.si(turn) if done else reason.si(turn))


# --- synthesize ----------------------------------------------------------------------------
def _synthesize(turn: TurnState, publisher: Publisher) -> FinishedTurn:
    coalescer = DeltaCoalescer(publisher)
    text = get_reasoner().answer(_context(turn), coalescer.add)
    coalescer.flush()
    used = sorted({o["tool"] for r in turn["rounds"] for o in r["results"] if o.get("status") == TOOL_OK})
    return {"session_id": turn["session_id"], "message_id": turn["message_id"], "prompt": turn["prompt"],
            "owner": guarding.principal(turn).owner, "answer": text, "tools_used": used}


def finish_turn(result: FinishedTurn) -> FinishedTurn:
    """The terminal `done` event comes after synthesize's `finished`, so the stream shows every step.

    Only the delivery whose transition to `done` wins writes the answer and the history; any
    other (a redelivery, a turn cancelled meanwhile) re-publishes the recorded terminal event,
    which the log already has."""
    session_id, message_id = result["session_id"], result["message_id"]
    status = with_broker(turns.update_turn, session_id, message_id, status=DONE, answer=result["answer"])
    if status == DONE:
        history.remember(session_id, result["owner"], result["prompt"], result["answer"], result["tools_used"])
        record = turns.TurnRecord(status=DONE, answer=result["answer"])  # what was just written: no read back
        log.info("turn done")  # one line per turn (the per-task lines are at debug: workers.telemetry)
    else:
        record = with_broker(turns.get_turn, session_id, message_id)
    settle_terminal_event(Publisher(session_id, message_id, fail_soft=True), terminal_event(record))
    return result


@app.task(name=task_name(SYNTHESIZE), base=TurnTask, ignore_result=True)
def synthesize(turn: TurnState) -> None:
    # Nothing reads a task's return value here, and Celery reprs it for its log line and event.
    finish_turn(run_step(SYNTHESIZE, turn, _synthesize))


# --- the chain's errback ---------------------------------------------------------------------
def lost_to_an_outage(exc: BaseException) -> bool:
    """Did the task fail because the broker (queue or result backend) was unreachable?
    A chord reports a failed part as ChordError, naming the part's exception in its text."""
    if isinstance(exc, (*UNAVAILABLE, OperationalError)):
        return True
    return isinstance(exc, ChordError) and any(name in str(exc) for name in ("ConnectionError", "TimeoutError"))


@app.task(name=task_name(TURN_FAILED), ignore_result=True)
def turn_failed(request, exc, traceback, session_id: str, message_id: str) -> None:
    """Ends a turn whose task failed: status `failed` and one `error` event, whatever failed.
    Celery runs it in the worker where the task failed (for a hard time limit, in the process
    that enforced it), with the exception as the result backend would store it."""
    if lost_to_an_outage(exc):
        # Not the turn's fault: a broker outage broke its flow (a chord counter, a send). The
        # turn stays running; with no progress for a visibility timeout, it is sent again
        # (workers.redelivery).
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


@app.task(name=task_name(REPUBLISH_TERMINAL_EVENT), bind=True, max_retries=defaults.OUTCOME_RETRIES)
def republish_terminal_event(self, session_id: str, message_id: str) -> None:
    """A terminal event a worker could not publish, tried again with backoff (2 s doubling to
    60 s) until the progress store takes it; its dedupe name makes a second copy impossible."""
    try:
        publish_terminal_event(session_id, message_id, turns.get_turn(session_id, message_id))
    except RedisError as exc:
        countdown = min(defaults.OUTCOME_RETRY_FIRST_S * 2 ** self.request.retries, defaults.OUTCOME_RETRY_MAX_S)
        raise self.retry(exc=exc, countdown=countdown)
