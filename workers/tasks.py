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

A failing tool is an error result the reasoner sees. A failing step raises StepFailed; the
chain's errback (`turn_failed`), which every task carries, ends the turn with an `error` event."""

import functools
import json
import logging
import time
from typing import Callable, TypeVar

from celery import chord, group
from celery.exceptions import ChordError, Ignore, Reject
from kombu.exceptions import OperationalError

from shared import history, turns
from shared.breakers import UNAVAILABLE
from shared.celery_config import task_name
from shared.events import ErrorEvent, StepEvent, ToolEvent
from shared.outcome import publish_outcome
from shared.progress import Publisher, TokenCoalescer
from shared.settings import get_settings
from workers import guarding
from workers.celery_app import app
from workers.mcp_client import ToolCallError, get_hub
from workers.reasoners import ReasonerError, TurnContext, get_reasoner

PREVIEW_CHARS = 200
BROKER_POLL_S = 0.5
log = logging.getLogger(__name__)
T = TypeVar("T")


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
    except (StepFailed, Reject, Ignore):
        raise
    except UNAVAILABLE as exc:
        if getattr(exc, "role", None) != "broker":
            raise StepFailed(step, f"{step} failed: {exc}") from exc
        # The broker holds the turn (history, status): its outage is no reason to fail the turn.
        # The message goes back (now, or after the visibility timeout) and the step runs again.
        log.warning("%s of %s/%s hit a broker outage; handing the step back", step,
                    turn["session_id"], turn["message_id"])
        raise Reject(exc, requeue=True) from exc
    except (ReasonerError, ToolCallError, guarding.PermissionUnavailable) as exc:
        raise StepFailed(step, f"{step} failed: {exc}") from exc
    except Exception as exc:
        log.exception("%s failed", step)
        raise StepFailed(step, f"{step} failed: {type(exc).__name__}: {exc}") from exc
    publisher.publish(StepEvent(step=step, status="finished", round=round_, duration_ms=_ms_since(started)),
                      dedupe=f"{tag}-finished")
    return result


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
        raise StepFailed("discover", "discover failed: no MCP server answered: " +
                         "; ".join(f"{name}: {err}" for name, err in hub.server_errors.items()))
    allowed = guarding.preflight(guarding.principal(turn), catalogue)
    public = [{k: t[k] for k in ("name", "description", "input_schema", "policy")} for t in allowed]
    return {**turn, "tools": public, "history": history.recall(turn["session_id"]), "rounds": []}


@app.task(name=task_name("discover"))
def discover(turn: dict) -> dict:
    return run_step("discover", turn, _discover)


# --- reason --------------------------------------------------------------------------------
def _reason(turn: dict, publisher: Publisher) -> dict:
    """The reasoner's next calls. A call to a tool it was not offered still goes to `execute`,
    where the guards deny it or the catalogue does not know it: either way, the reasoner sees why."""
    round_ = len(turn["rounds"]) + 1
    calls = [{**call, "call_id": f"r{round_}c{i}"} for i, call in enumerate(get_reasoner().decide(_context(turn)))]
    return {**turn, "pending": calls}


@app.task(name=task_name("reason"), bind=True)
def reason(self, turn: dict) -> None:
    round_ = len(turn["rounds"]) + 1
    turn = run_step("reason", turn, _reason, round_=round_)
    forward(self, execute.si(turn) if turn["pending"] else synthesize.si(turn))


# --- execute -------------------------------------------------------------------------------
def _progress_publisher(publisher: Publisher, call: dict) -> Callable[[float, float | None, str | None], None]:
    """Publishes a call's progress reports as `running` events, numbered so that a redelivered
    call publishes none of them twice."""
    published = 0

    def forward(progress: float, total: float | None, message: str | None) -> None:
        nonlocal published
        published += 1
        publisher.publish(ToolEvent(call_id=call["call_id"], tool=call["tool"], status="running",
                                    progress=progress, total=total, message=message),
                          dedupe=f"tool-{call['call_id']}-running-{published}")
    return forward


def _tool_event(call: dict, outcome: dict, duration_ms: float, guard: guarding.GuardedCall | None) -> ToolEvent:
    preview = json.dumps(outcome.get("result", ""), ensure_ascii=False)[:PREVIEW_CHARS]
    return ToolEvent(call_id=call["call_id"], tool=call["tool"], args=call["args"], status=outcome["status"],
                     duration_ms=duration_ms, result_preview=preview, error=outcome.get("error"),
                     permission=guard.permission if guard else None, cache=guard.cache if guard else None)


@app.task(name=task_name("call_tool"))
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
        try:
            tool = hub.resolve(call["tool"])
            run = functools.partial(hub.call_tool, call["tool"], caller=guarding.caller(ref),
                                    on_progress=_progress_publisher(publisher, call))
            guard = guarding.guarded(guarding.principal(ref), tool, call["args"], run)
            outcome.update(status=guard.status)
            outcome.update({"result": guard.result} if guard.status == "ok" else {"error": guard.error})
        except (ToolCallError, guarding.PermissionUnavailable) as exc:
            outcome.update(status="error", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure is the reasoner's to see, not a dead turn
            log.exception("tool call %s failed", call["tool"])
            outcome.update(status="error", error=f"{type(exc).__name__}: {exc}")
    outcome["ended_at"] = time.time()
    publisher.publish(_tool_event(call, outcome, _ms_since(started), guard), dedupe=f"tool-{call['call_id']}")
    return outcome


@app.task(name=task_name("execute"), bind=True)
def execute(self, turn: dict) -> None:
    """Fan the pending calls out as a chord: each on its own task (and tools worker), then collect."""
    round_ = len(turn["rounds"]) + 1
    publisher = start_step(turn, "execute")
    publisher.publish(StepEvent(step="execute", status="started", round=round_), dedupe=f"execute-{round_}-started")
    ref = {k: turn[k] for k in ("session_id", "message_id", "user", "tenant", "roles")}
    calls = [{k: c[k] for k in ("call_id", "tool", "args", "error", "model_call_id") if k in c} for c in turn["pending"]]
    state = {**turn, "pending": [], "execute_started_at": time.time()}
    for call in calls:  # shown at once, before the guards and however long the tools queue is
        publisher.publish(ToolEvent(call_id=call["call_id"], tool=call["tool"], args=call["args"], status="started"),
                          dedupe=f"tool-{call['call_id']}-started")
    forward(self, chord(group(call_tool.si(ref, c) for c in calls), collect.s(state)))


@app.task(name=task_name("collect"), bind=True)
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


@app.task(name=task_name("synthesize"))
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
    Celery runs it in the worker where the task failed, with the exception itself."""
    if lost_to_an_outage(exc):
        # Not the turn's fault: a broker outage broke its flow (a chord counter, a send). The
        # turn stays running; with no progress for a visibility timeout, it is sent again
        # (shared.redelivery).
        log.warning("turn %s/%s lost its flow to a broker outage (%s); left for redelivery", session_id,
                    message_id, exc)
        return
    step = getattr(exc, "step", None) or str(getattr(request, "task", "") or "").rpartition(".")[2] or None
    message = str(exc) if isinstance(exc, StepFailed) else f"{step or 'a step'} failed: {type(exc).__name__}: {exc}"
    status = with_broker(turns.update_turn, session_id, message_id, status=turns.FAILED, error=message)
    if status == turns.FAILED:
        Publisher(session_id, message_id, fail_soft=True).publish(ErrorEvent(message=message, step=step),
                                                                  dedupe="terminal")
