"""The four steps of a turn, chained reason -> discover -> execute -> synthesize.

Every step publishes `started` and `finished` (with its duration) and keeps the turn's
status record current. Delivery is at least once, so every step is safe to run twice:
- events carry dedupe names, so a redelivered step re-publishes nothing the browser has;
- a step first moves the turn to `running`, which fails for a turn that is already done,
  failed or cancelled: then the step does nothing and stops the chain (Ignore), so a
  cancelled turn skips its remaining steps and a finished one is never answered twice;
- the answer is written by one atomic transition to `done`, and its `done` event is
  published once (shared.outcome).
Progress is fail-soft (a dead progress Redis drops events, the turn goes on); the broker
holds the turn itself, so a step waits for it (up to TURNSTREAM_WORKER_BROKER_WAIT_S) and
then hands its message back for redelivery."""

import json
import logging
import time
from typing import Callable, TypeVar

from celery.exceptions import Ignore, Reject

from shared import turns
from shared.breakers import UNAVAILABLE
from shared.celery_config import task_name
from shared.events import ErrorEvent, StepEvent, ToolEvent
from shared.outcome import publish_outcome
from shared.progress import Publisher, TokenCoalescer
from shared.settings import get_settings
from workers import reasoner
from workers.celery_app import app
from workers.tools import BUILTIN_TOOLS, ToolError

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


def run_step(step: str, turn: dict, body: Callable[[dict, Publisher], dict]) -> dict:
    session_id, message_id = turn["session_id"], turn["message_id"]
    publisher = Publisher(session_id, message_id, fail_soft=True)
    status = with_broker(turns.update_turn, session_id, message_id, status=turns.RUNNING, step=step)
    if status != turns.RUNNING:
        stop_ended_turn(publisher, step, status)
    publisher.publish(StepEvent(step=step, status="started"), dedupe=f"{step}-started")
    started = time.perf_counter()
    try:
        result = body(turn, publisher)
    except (Reject, Ignore):
        raise
    except Exception as exc:
        fail_turn(publisher, step, f"{step} failed: {exc}")
        raise
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    publisher.publish(StepEvent(step=step, status="finished", duration_ms=duration_ms), dedupe=f"{step}-finished")
    return result


def stop_ended_turn(publisher: Publisher, step: str, status: str | None) -> None:
    """The turn was cancelled, already finished by an earlier delivery, or is gone: skip the
    rest of the chain, after making sure the log carries the turn's outcome."""
    log.info("turn %s/%s is %s: skipping %s and the steps after it",
             publisher.session_id, publisher.message_id, status or "gone", step)
    if status is not None:
        record = with_broker(turns.get_turn, publisher.session_id, publisher.message_id)
        publish_outcome(publisher.session_id, publisher.message_id, record, publisher)
    raise Ignore()


def fail_turn(publisher: Publisher, step: str, message: str) -> None:
    status = with_broker(turns.update_turn, publisher.session_id, publisher.message_id,
                         status=turns.FAILED, error=message)
    if status == turns.FAILED:
        publisher.publish(ErrorEvent(message=message, step=step), dedupe="terminal")


def _reason(turn: dict, publisher: Publisher) -> dict:
    return {**turn, "intents": reasoner.plan(turn["prompt"])}


def _discover(turn: dict, publisher: Publisher) -> dict:
    wanted = {intent["tool"] for intent in turn["intents"]}
    return {**turn, "tools": sorted(name for name in BUILTIN_TOOLS if name in wanted)}


def _call_tool(call_id: str, call: dict, publisher: Publisher) -> dict:
    started = time.perf_counter()
    try:
        result = BUILTIN_TOOLS[call["tool"]].run(call["args"])
        outcome = {**call, "call_id": call_id, "status": "ok", "result": result}
    except ToolError as exc:
        outcome = {**call, "call_id": call_id, "status": "error", "error": str(exc)}
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    publisher.publish(ToolEvent(call_id=call_id, tool=call["tool"], args=call["args"], status=outcome["status"],
                                duration_ms=duration_ms, error=outcome.get("error"),
                                result_preview=json.dumps(outcome.get("result", ""))[:PREVIEW_CHARS]),
                      dedupe=f"tool-{call_id}")
    return outcome


def _execute(turn: dict, publisher: Publisher) -> dict:
    calls = [intent for intent in turn["intents"] if intent["tool"] in turn["tools"]]
    return {**turn, "results": [_call_tool(f"call-{i}", call, publisher) for i, call in enumerate(calls)]}


def _synthesize(turn: dict, publisher: Publisher) -> dict:
    text = reasoner.answer(turn["prompt"], turn["results"])
    coalescer = TokenCoalescer(publisher)
    for word in text.split(" "):
        coalescer.add(word + " ")
    coalescer.flush()
    return {"session_id": turn["session_id"], "message_id": turn["message_id"], "answer": text}


def finish_turn(result: dict) -> dict:
    """The terminal `done` event comes after synthesize's `finished`, so the stream shows all four steps.

    Only the delivery whose transition to `done` wins writes the answer; any other (a redelivery,
    a turn cancelled meanwhile) re-publishes the recorded outcome, which the log already has."""
    session_id, message_id = result["session_id"], result["message_id"]
    with_broker(turns.update_turn, session_id, message_id, status=turns.DONE, answer=result["answer"])
    record = with_broker(turns.get_turn, session_id, message_id)
    publish_outcome(session_id, message_id, record, Publisher(session_id, message_id, fail_soft=True))
    return result


@app.task(name=task_name("reason"))
def reason(turn: dict) -> dict:
    return run_step("reason", turn, _reason)


@app.task(name=task_name("discover"))
def discover(turn: dict) -> dict:
    return run_step("discover", turn, _discover)


@app.task(name=task_name("execute"))
def execute(turn: dict) -> dict:
    return run_step("execute", turn, _execute)


@app.task(name=task_name("synthesize"))
def synthesize(turn: dict) -> dict:
    return finish_turn(run_step("synthesize", turn, _synthesize))
