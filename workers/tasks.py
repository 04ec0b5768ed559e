"""The four steps of a turn, chained reason -> discover -> execute -> synthesize.

Every step publishes `started` and `finished` (with its duration) and keeps the turn's
status record current. Events carry dedupe names, so a redelivered step (late acks)
re-publishes nothing the browser already has."""

import json
import time
from typing import Callable

from shared import auth_memo, turns
from shared.celery_config import task_name
from shared.events import DoneEvent, ErrorEvent, StepEvent, ToolEvent
from shared.progress import Publisher, TokenCoalescer
from shared.tokens import Principal
from shared.tool_guards import PermissionUnavailable, guarded_call, unavailable_message
from workers import reasoner
from workers.celery_app import app
from workers.tools import BUILTIN_TOOLS

PREVIEW_CHARS = 200


def run_step(step: str, turn: dict, body: Callable[[dict, Publisher], dict]) -> dict:
    session_id, message_id = turn["session_id"], turn["message_id"]
    publisher = Publisher(session_id, message_id)
    turns.update_turn(session_id, message_id, status=turns.RUNNING, step=step)
    publisher.publish(StepEvent(step=step, status="started"), dedupe=f"{step}-started")
    started = time.perf_counter()
    try:
        result = body(turn, publisher)
    except Exception as exc:
        fail_turn(publisher, step, f"{step} failed: {exc}")
        raise
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    publisher.publish(StepEvent(step=step, status="finished", duration_ms=duration_ms), dedupe=f"{step}-finished")
    return result


def fail_turn(publisher: Publisher, step: str, message: str) -> None:
    turns.update_turn(publisher.session_id, publisher.message_id, status=turns.FAILED, error=message)
    publisher.publish(ErrorEvent(message=message, step=step), dedupe="terminal")


def _reason(turn: dict, publisher: Publisher) -> dict:
    return {**turn, "intents": reasoner.plan(turn["prompt"])}


def _principal(turn: dict) -> Principal:
    return Principal(user=turn["user"], tenant=turn["tenant"], roles=tuple(turn.get("roles", ())))


def _discover(turn: dict, publisher: Publisher) -> dict:
    """Preflight every candidate tool in one batch; only the allowed ones are offered on."""
    preflight = auth_memo.preflight(_principal(turn), sorted(BUILTIN_TOOLS))
    wanted = {intent["tool"] for intent in turn["intents"]}
    blocked = sorted(wanted & set(preflight.unavailable))
    if blocked:
        raise PermissionUnavailable(unavailable_message(blocked, preflight.decisions[blocked[0]].error or ""))
    return {**turn, "tools": preflight.allowed}


def _call_tool(call_id: str, call: dict, principal: Principal, publisher: Publisher) -> dict:
    """Re-checked and cached by the guards; a denied call is reported, never run."""
    guarded = guarded_call(principal, call["tool"], call["args"], BUILTIN_TOOLS[call["tool"]].run)
    outcome = {**call, "call_id": call_id, "status": guarded.status}
    outcome.update({"result": guarded.result} if guarded.status == "ok" else {"error": guarded.error})
    preview = json.dumps(guarded.result if guarded.status == "ok" else "")[:PREVIEW_CHARS]
    publisher.publish(ToolEvent(call_id=call_id, tool=call["tool"], args=call["args"], status=guarded.status,
                                duration_ms=guarded.duration_ms, error=guarded.error, permission=guarded.permission,
                                cache=guarded.cache, result_preview=preview), dedupe=f"tool-{call_id}")
    return outcome


def _execute(turn: dict, publisher: Publisher) -> dict:
    principal = _principal(turn)
    return {**turn, "results": [_call_tool(f"call-{i}", call, principal, publisher)
                                 for i, call in enumerate(turn["intents"])]}


def _synthesize(turn: dict, publisher: Publisher) -> dict:
    text = reasoner.answer(turn["prompt"], turn["results"])
    coalescer = TokenCoalescer(publisher)
    for word in text.split(" "):
        coalescer.add(word + " ")
    coalescer.flush()
    return {"session_id": turn["session_id"], "message_id": turn["message_id"], "answer": text}


def finish_turn(result: dict) -> dict:
    """The terminal `done` event comes after synthesize's `finished`, so the stream shows all four steps."""
    turns.update_turn(result["session_id"], result["message_id"], status=turns.DONE, answer=result["answer"])
    Publisher(result["session_id"], result["message_id"]).publish(DoneEvent(answer=result["answer"]),
                                                                  dedupe="terminal")
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
