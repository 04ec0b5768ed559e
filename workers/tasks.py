"""The steps of a turn: discover -> reason -> [execute -> reason]* -> synthesize.

The web tier sends discover, which runs or sends reason. `reason` asks the reasoner for tool
calls and hands over to `execute` (one `call_tool` task per call, in parallel on the tools
queue, then `collect`), which loops back to `reason` until the reasoner is done or
TURNSTREAM_MAX_TOOL_ROUNDS is reached; then `synthesize` streams the answer. A step hands over
by sending the next one itself; how a step runs, reports and hands over is workers.steps.
Every step publishes `started` and `finished` (reason and execute with their round) and keeps
the turn's status record current.

Tasks are where a turn changes worker, not one per step. A step whose next step would only go
back to the same queue runs it in its own task (workers.steps.step_here), claim and checkpoint
included: `reason` runs execute's fan-out; `collect` (on the llm queue) runs the next `reason`;
`discover` runs the first `reason` (reason_here) and `reason` runs `synthesize` where the
watchdog holds the time limits (so each model call keeps a limit of its own) and, for discover,
where the worker serves the llm queue too (the threads pool's llm worker serves `discover,llm`).
A one-call turn is three tasks, discover, call_tool, collect, on the threads pool (the rules and
local reasoners), a hop fewer than a bare four-task chain; under prefork or gevent (openai)
reason and synthesize are tasks of their own, so five. Each task saved is a message
published, delivered and acknowledged, its task events and its delivery count (bench/capacity.py). Rejected: one task per step, which
made a turn seven tasks for the same work; and running the tool calls in the reason task, which
would put them on the llm worker and serialise them.

Delivery is at least once, so every step is safe to run twice:
- events carry dedupe names, so a redelivered step re-publishes nothing the browser has;
- a step first moves the turn to `running`, which fails for a turn that is already done,
  failed or cancelled: then the step does nothing and stops the turn's flow (Ignore), so a
  cancelled turn skips its remaining steps and a finished one is never answered twice;
- the answer is written by one atomic transition to `done`, and its `done` event is
  published once (shared.terminal_event).
And turns are durable: each step claims its place in the turn and leaves a checkpoint (the
state the next step runs on) before sending the next step, so a redelivered step the turn has
moved past does nothing and a finished reasoner call is not made again (workers.steps,
shared.turns); each tool call goes through the tool-call journal (shared.tool_journal), so a
finished call is not run again and a call that is not read-only carries an idempotency key.
Progress is fail-soft (a dead progress Redis sends events to the outbox, shared.outbox); the broker
holds the turn itself, so a step waits for it (up to TURNSTREAM_WORKER_BROKER_WAIT_S) and
then hands its message back for redelivery.

A failing tool is an error result the reasoner sees. A failing step ends its turn itself with
one sentence (workers.steps.fail_turn) and raises StepFailed; the chain's errback
(`turn_failed`), which every task and every tool call carries, ends the turn the same way for
what a step cannot report itself (a hard time limit). Every task runs as a TurnTask: its
deliveries are counted and, in the threads pool, its time limit watched (workers.steps).

Only `call_tool` stores its result, and only in a chord (which reads it); every other step hands
its state on in the next step's message and its record is the turn's, so it stores none
(ignore_result)."""

import functools
import json
import logging
import time
from collections.abc import Sequence
from typing import Callable, TypeVar

from celery import chord, group
from celery.exceptions import ChordError, SoftTimeLimitExceeded, TimeLimitExceeded
from kombu.exceptions import OperationalError

from shared import deliveries, history, metrics, tool_journal, turns
from shared.breakers import UNAVAILABLE
from shared.defaults import LLM_QUEUE
from shared.events import ToolEvent
from shared.failures import sentence, step_of, time_limit_cause, unexpected_cause
from shared.progress import DeltaCoalescer, Publisher
from shared.settings import get_settings
from shared.guards import declarations
from shared.terminal_event import terminal_event
from shared.turn_flow import (Checkpoint, FinishedTurn, ToolCall, ToolOutcome, TurnRef, TurnState, first_task_ids,
                              held_events, position, task_name)
from shared.vocabulary import (CALL_TOOL, COLLECT, DISCOVER, DONE, EXECUTE, FINISHED, REASON, STARTED, SYNTHESIZE,
                               TOOL_ERROR, TOOL_OK, TOOL_RUNNING, TOOL_STARTED, TURN_FAILED, tool_dedupe,
                               tool_running_dedupe, tool_started_dedupe)
from workers import guarding, time_limits
from workers.celery_app import app, consumes
from workers.mcp.client import Progress, ToolCallError, mcp_client
from workers.reasoners import TurnContext, get_reasoner
from workers.steps import (Shown, StepFailed, TurnTask, advance, fail_turn, forward, held, ms_since, phase_event,
                           recorded_step, release, run_step_holding, settle_terminal_event, start_step,
                           step_failure, step_here, stop_a_crashing_step, with_broker)

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


@app.task(name=task_name(DISCOVER), bind=True, base=TurnTask, ignore_result=True)
def discover(self, turn: TurnState) -> None:
    """Then `reason`: in this task where this worker serves reason's queue and the watchdog gives
    each step a time limit of its own (reason_here); otherwise sent as a task with the turn and
    discover's `finished`, which reason shows with its own `started` (the checkpoint keeps it
    too, for a resume). No release: reason takes the turn over."""
    turn, finished = run_step_holding(DISCOVER, turn, _discover)
    inline = reason_here()
    advance(turn, position(DISCOVER), Checkpoint(REASON, 1, turn, held(finished)), then=REASON if inline else None)
    if inline:
        with step_here(self, turn, REASON):
            reason_and_on(self, turn, claimed=True, shown_with_start=finished)
        return
    reason_id = first_task_ids(turn["message_id"])[1]  # the id a cancel revokes (shared.turn_flow)
    forward(self, reason.si(turn, held(finished)).set(task_id=reason_id), turn, position(DISCOVER), let_go=False)


def reason_here() -> bool:
    """Does discover run `reason` in its own task? Where this worker also serves reason's queue
    (the llm worker of the threads pool serves `discover,llm`: shared.cli.processes) and the
    watchdog holds the time limits, so the model call still gets a limit of its own, as
    synthesize_next decides. A hop saved: a message published, delivered and acknowledged."""
    return time_limits.holds_limits() and consumes(LLM_QUEUE)


# --- reason --------------------------------------------------------------------------------
def _reason(turn: TurnState, publisher: Publisher) -> TurnState:
    """The reasoner's next calls. A call to a tool it was not offered still goes to `execute`,
    where the guards deny it or the catalogue does not know it: either way, the reasoner sees why."""
    round_ = _round(turn)
    reasoner = get_reasoner()
    metrics.record_reasoner_call(reasoner.name, "decide")
    calls = [{**call, "call_id": f"r{round_}c{i}"} for i, call in enumerate(reasoner.decide(_context(turn)))]
    return {**turn, "pending": calls}


@app.task(name=task_name(REASON), bind=True, base=TurnTask, ignore_result=True)
def reason(self, turn: TurnState, shown: Sequence[Sequence[str]] = ()) -> None:
    """`shown`: the step before's held events (discover's `finished`), shown with reason's `started`."""
    reason_and_on(self, turn, shown_with_start=held_events(shown))


def reason_and_on(task, turn: TurnState, claimed: bool = False, shown_with_start: Sequence[Shown] = ()) -> None:
    """The reason step, then in the same task the step it leads to: execute's fan-out (a few
    milliseconds of bookkeeping), or synthesize where this pool lets it keep a time limit of its own.
    A step run next in the same task is claimed with the checkpoint that leads to it (advance's
    `then`); `claimed`: so was this reason step, by collect. Its `finished` is shown with the next
    step's `started`, after the checkpoint (run_step_holding), and `shown_with_start` with its own."""
    round_ = _round(turn)
    turn, finished = run_step_holding(REASON, turn, _reason, round_=round_, claimed=claimed,
                                      shown_with_start=shown_with_start)
    # The decision is saved before anything else happens: a redelivery never asks the reasoner again.
    if turn["pending"]:
        advance(turn, position(REASON, round_), Checkpoint(EXECUTE, round_, turn, held(finished)), then=EXECUTE)
        with step_here(task, turn, EXECUTE):
            fan_out(task, turn, claimed=True, shown_with_start=finished)
    else:
        synthesize_next(task, turn, position(REASON, round_), shown_with_start=finished)


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


JOURNAL_POLL_S = 0.25


def idempotency_key(ref: TurnRef, call: ToolCall) -> str:
    """The same for every delivery of one call of one turn (workers.mcp.meta.IDEMPOTENCY_META)."""
    return f"{ref['session_id']}/{ref['message_id']}/{call['call_id']}"


def read_only(tool: dict) -> bool:
    """A tool that says so in its MCP annotations (readOnlyHint), or that our declarations let the
    execution cache keep (the declarations never make a side effect cacheable)."""
    return bool(tool.get("read_only")) or declarations.declaration(tool["name"], tool.get("cache_declaration")).cacheable


def _journal_begin(ref: TurnRef, call: ToolCall) -> tool_journal.Entry:
    """tool_journal.begin, counting the task's delivery if no attempt counted it yet (shared.deliveries)."""
    return tool_journal.begin(ref["session_id"], ref["message_id"], call["call_id"],
                              count=deliveries.to_count(ref["session_id"], ref["message_id"]),
                              on_counted=deliveries.mark_counted)


def journal_entry(ref: TurnRef, call: ToolCall) -> tool_journal.Entry:
    """The journal's word on this call, waiting while a live worker runs it (up to a call's timeout)."""
    settings = get_settings()
    deadline = time.monotonic() + settings.mcp_call_timeout_s + settings.mcp_connect_timeout_s
    while True:
        entry = with_broker(_journal_begin, ref, call)
        stop_a_crashing_step(entry.crashes)
        if entry.state != "wait" or time.monotonic() > deadline:
            return entry
        time.sleep(JOURNAL_POLL_S)


@app.task(name=task_name(CALL_TOOL), base=TurnTask)
def call_tool(ref: TurnRef, call: ToolCall) -> ToolOutcome:
    """One tool call behind the guards and the journal. Never raises for a tool's failure: the outcome says it."""
    publisher = Publisher(ref["session_id"], ref["message_id"], fail_soft=True)
    started = time.perf_counter()
    entry = journal_entry(ref, call)
    if entry.state == "done":
        outcome = entry.outcome
        publisher.publish(_tool_event(outcome, round((outcome["ended_at"] - outcome["started_at"]) * 1000, 2), None),
                          dedupe=tool_dedupe(call["call_id"]))
        return outcome
    outcome = _run_call(ref, call, entry, started, publisher)
    return outcome


def _run_call(ref: TurnRef, call: ToolCall, entry: tool_journal.Entry, started: float,
              publisher: Publisher) -> ToolOutcome:
    outcome: ToolOutcome = {**call, "status": TOOL_ERROR, "started_at": time.time(), "ended_at": 0.0}
    guard = None
    if not call.get("error"):
        client = mcp_client()
        late: list[SoftTimeLimitExceeded] = []
        try:
            tool = client.resolve(call["tool"])
            key = None if read_only(tool) else idempotency_key(ref, call)
            if entry.rerun:
                log.warning("tool call %s (%s) of %s/%s was started by %s, which died: %s", call["call_id"],
                            call["tool"], ref["session_id"], ref["message_id"], entry.holder,
                            "running it again (read-only)" if key is None else f"sending it again with key {key}")
            # A lost tool-server session is retried: the tool is read-only, or the key makes it act once.
            run = functools.partial(_noting_time_limit, late, client.call_tool, call["tool"],
                                    caller=guarding.caller(ref), on_progress=_progress_publisher(publisher, call),
                                    idempotency_key=key, retry_lost_session=True)
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
    recorded = with_broker(tool_journal.finish, ref["session_id"], ref["message_id"], call["call_id"], outcome)
    publisher.publish(_tool_event(recorded, ms_since(started), guard if recorded == outcome else None),
                      dedupe=tool_dedupe(call["call_id"]))
    return recorded


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
    """The execute step as a task of its own: sent only to resume a turn from a checkpoint that
    waits for its round's calls (a call's worker died), it fans out the same calls again and the
    journal answers those that finished. In a turn's normal flow `reason` runs it (fan_out)."""
    fan_out(self, turn)


def fan_out(task, turn: TurnState, claimed: bool = False, shown_with_start: Sequence[Shown] = ()) -> None:
    """Send the pending calls, each as its own task (on any tools worker), and `collect` after them:
    one call as a chain (its outcome rides in collect's message), several as a chord.
    `shown_with_start`: events shown with the step's start (reason's `finished`)."""
    round_ = _round(turn)
    publisher = start_step(turn, EXECUTE, round_=round_, latest=position(COLLECT, round_), claimed=claimed)
    calls = [{k: c[k] for k in ToolCall.__annotations__ if k in c} for c in turn["pending"]]
    # The step's start and its calls are shown at once (before the guards, however long the tools
    # queue is), in one round trip, before the checkpoint: a redelivery publishes none of them twice.
    publisher.publish_all([
        *shown_with_start,
        phase_event(EXECUTE, STARTED, round_),
        *((ToolEvent(call_id=call["call_id"], tool=call["tool"], args=call["args"], status=TOOL_STARTED),
           tool_started_dedupe(call["call_id"])) for call in calls)])
    advance(turn, position(COLLECT, round_), Checkpoint(COLLECT, round_, turn))
    ref: TurnRef = {k: turn[k] for k in TurnRef.__annotations__}
    state: TurnState = {**turn, "pending": [], "execute_started_at": time.time()}
    header = [call_tool.si(ref, c) for c in calls]
    if len(header) == 1:
        # No chord for one call: no stored result, no counter, no fetch of the results; forward
        # gives the chain's tasks the turn's errbacks.
        flow = header[0].set(ignore_result=True) | collect.s(state)
    else:
        # Each call carries the turn's errbacks too: a call killed by its time limit ends the turn
        # itself (Celery links a chord's errbacks to its body only, which hears of it as a ChordError).
        for signature in header:
            for errback in task.request.errbacks or []:
                signature.link_error(errback)
        flow = chord(group(header), collect.s(state))
    forward(task, flow, turn, position(EXECUTE, round_))


@app.task(name=task_name(COLLECT), bind=True, base=TurnTask, ignore_result=True)
def collect(self, results: list[ToolOutcome] | ToolOutcome, turn: TurnState) -> None:
    """The end of a round's calls (a chord's body, or the call's chain), then in the same task the
    next reason step (or synthesize): collecting is bookkeeping, so it runs on the llm queue."""
    results = results if isinstance(results, list) else [results]  # one call comes through a chain
    round_ = _round(turn)
    duration_ms = round((time.time() - turn.pop("execute_started_at")) * 1000, 2)
    start_step(turn, EXECUTE, task=COLLECT, round_=round_)
    # Shown with the next step's start, after the checkpoint that leads to it: one round trip.
    finished = [phase_event(EXECUTE, FINISHED, round_, duration_ms)]
    turn = {**turn, "rounds": [*turn["rounds"], {"results": results}]}
    if len(turn["rounds"]) >= get_settings().max_tool_rounds:
        synthesize_next(self, turn, position(COLLECT, round_), shown_with_start=finished)
        return
    advance(turn, position(COLLECT, round_), Checkpoint(REASON, round_ + 1, turn, held(finished)), then=REASON)
    with step_here(self, turn, REASON):
        reason_and_on(self, turn, claimed=True, shown_with_start=finished)


# --- synthesize ----------------------------------------------------------------------------
def _synthesize(turn: TurnState, publisher: Publisher) -> FinishedTurn:
    coalescer = DeltaCoalescer(publisher)
    reasoner = get_reasoner()
    metrics.record_reasoner_call(reasoner.name, "answer")
    text = reasoner.answer(_context(turn), coalescer.add)
    coalescer.flush()
    used = sorted({o["tool"] for r in turn["rounds"] for o in r["results"] if o.get("status") == TOOL_OK})
    return {"session_id": turn["session_id"], "message_id": turn["message_id"], "prompt": turn["prompt"],
            "owner": guarding.principal(turn).owner, "answer": text, "tools_used": used}


def finish_turn(result: FinishedTurn, finished: Sequence[Shown] = ()) -> FinishedTurn:
    """The terminal `done` event comes after synthesize's `finished` (held by run_step_holding and
    shown here, in the same round trip), so the stream shows every step.

    Only the delivery whose transition to `done` wins writes the answer and the history (one
    script); any other (a redelivery, a turn cancelled meanwhile) re-publishes the recorded
    terminal event, which the log already has."""
    session_id, message_id = result["session_id"], result["message_id"]
    _, made_done = with_broker(history.finish_with_answer, session_id, message_id, result["owner"], result["prompt"],
                               result["answer"], result["tools_used"])
    if made_done:
        record = turns.TurnRecord(status=DONE, answer=result["answer"])  # what was just written: no read back
        log.info("turn done")  # one line per turn (the per-task lines are at debug: workers.telemetry)
    else:
        record = with_broker(turns.get_turn, session_id, message_id)
    settle_terminal_event(Publisher(session_id, message_id, fail_soft=True), terminal_event(record), finished)
    release(result, position(SYNTHESIZE))
    return result


@app.task(name=task_name(SYNTHESIZE), base=TurnTask, ignore_result=True)
def synthesize(turn: TurnState) -> None:
    # Nothing reads a task's return value here, and Celery reprs it for its log line and event.
    finish_turn(*run_step_holding(SYNTHESIZE, turn, _synthesize))


def synthesize_next(task, turn: TurnState, here: int, shown_with_start: Sequence[Shown] = ()) -> None:
    """Save the step at `here`'s checkpoint, then synthesize: in this task where the watchdog
    holds the time limits, so the answer gets a deadline of its own (threads: the `rules` and
    `local` reasoners' pool); elsewhere as a task of its own, since prefork and gevent enforce one
    limit per task and the model's two calls must not share it. `shown_with_start`: the step
    before's `finished`, shown with synthesize's `started` (or on its own, before it is sent)."""
    inline = time_limits.holds_limits()
    advance(turn, here, Checkpoint(SYNTHESIZE, None, turn, held(shown_with_start)), then=SYNTHESIZE if inline else None)
    if inline:
        with step_here(task, turn, SYNTHESIZE):
            finish_turn(*run_step_holding(SYNTHESIZE, turn, _synthesize, claimed=True,
                                          shown_with_start=shown_with_start))
    else:
        Publisher(turn["session_id"], turn["message_id"], fail_soft=True).publish_all(list(shown_with_start))
        forward(task, synthesize.si(turn), turn, here)


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
    time_limits.ended()  # run inline after the failed task, whose clock must not bound this
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
    # The step is the record's (claim_step writes it), not the task's: `collect` runs round 2's
    # reason, `reason` runs execute's fan-out and at times synthesize (see above).
    step = step_of(getattr(exc, "step", None) or recorded_step(session_id, message_id)
                   or getattr(request, "task", None))
    fail_turn(session_id, message_id, step, errback_sentence(step, exc))


def errback_sentence(step: str | None, exc: BaseException) -> str:
    if isinstance(exc, StepFailed):
        return str(exc)  # the step recorded it already; this only matters if that record was lost
    if isinstance(exc, TimeLimitExceeded):
        limit = exc.args[0] if exc.args and isinstance(exc.args[0], (int, float)) else get_settings().task_time_limit_s
        return sentence(step, time_limit_cause(limit))
    return sentence(step, unexpected_cause(exc))
