"""The words a turn is described in, each written once: turn statuses, steps, event types,
tool-call statuses, guard results and the dedupe names of progress events.

Modelled on celery.states: plain string constants, the sets that matter built from them
(FINAL_STATUSES, like Celery's READY_STATES) and, for each group, a `Literal` type that the
constants are read from, so type checkers and the running code share one spelling. The
browser gets the same names from GET /vocabulary.js (web.ui), generated from `for_browser()`.

Rejected: Enums. These names travel as bare strings through JSON, Redis hashes, Lua scripts
and SSE `event:` lines; str constants are their own wire form, with no `.value` at every
boundary and no decoding step to forget."""

from typing import Literal, get_args

# --- Turn statuses (the `status` field of a turn's record) ------------------------------------
TurnStatus = Literal["queued", "running", "done", "failed", "cancelled"]
STATUSES: tuple[TurnStatus, ...] = get_args(TurnStatus)
QUEUED, RUNNING, DONE, FAILED, CANCELLED = STATUSES
# A final status never changes again (shared.turns enforces it in one Lua script).
FINAL_STATUSES: frozenset[TurnStatus] = frozenset({DONE, FAILED, CANCELLED})

# --- Steps: what the user sees a turn do, in order -------------------------------------------
# discover comes first: a model can only choose among tools it has been shown.
Step = Literal["discover", "reason", "execute", "synthesize"]
STEPS: tuple[Step, ...] = get_args(Step)
DISCOVER, REASON, EXECUTE, SYNTHESIZE = STEPS
# Tasks that are not steps of their own: the parts of `execute`, and the chain's errback.
CALL_TOOL, COLLECT, TURN_FAILED = "call_tool", "collect", "turn_failed"

StepPhase = Literal["started", "finished"]
STARTED, FINISHED = get_args(StepPhase)

# --- Tool calls -------------------------------------------------------------------------------
# A call's life in `tool` events: `started` when execute dispatches it (before the guards),
# `running` while the tool reports MCP progress, then exactly one final status.
ToolStatus = Literal["ok", "error", "denied"]
TOOL_OK, TOOL_ERROR, TOOL_DENIED = get_args(ToolStatus)
TOOL_FINAL_STATUSES: frozenset[ToolStatus] = frozenset(get_args(ToolStatus))
ToolPhase = Literal["started", "running"]
TOOL_STARTED, TOOL_RUNNING = get_args(ToolPhase)
ToolEventStatus = Literal[ToolPhase, ToolStatus]

# --- Progress events: one SSE `event:` name per kind ---------------------------------------------
# "accepted" is every turn's first event: the web tier logs it before it answers 202, so a stream
# shows the turn at once, however long the first step waits for a worker.
EventType = Literal["accepted", "step", "tool", "token", "done", "error", "cancelled"]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)
# DELTA_EVENT's wire name is "token": it carries a piece of the answer's text.
ACCEPTED_EVENT, STEP_EVENT, TOOL_EVENT, DELTA_EVENT, DONE_EVENT, ERROR_EVENT, CANCELLED_EVENT = EVENT_TYPES
# A stream closes after one of these; each final status has exactly one.
TERMINAL_EVENTS: frozenset[EventType] = frozenset({DONE_EVENT, ERROR_EVENT, CANCELLED_EVENT})
TERMINAL_EVENT_OF: dict[TurnStatus, EventType] = {DONE: DONE_EVENT, FAILED: ERROR_EVENT, CANCELLED: CANCELLED_EVENT}

# --- Guard results, in the guards' own words ------------------------------------------------------
# "bypass": the call did not use the cache or memo (not cacheable, strict mode, or its Redis is down).
ExecCacheResult = Literal["hit", "miss", "coalesced", "bypass"]
AuthMemoResult = Literal["hit", "miss", "bypass"]
EXEC_CACHE_RESULTS: tuple[ExecCacheResult, ...] = get_args(ExecCacheResult)
AUTH_MEMO_RESULTS: tuple[AuthMemoResult, ...] = get_args(AuthMemoResult)
GUARD_RESULTS: dict[str, tuple[str, ...]] = {"exec_cache": EXEC_CACHE_RESULTS, "auth_memo": AUTH_MEMO_RESULTS}

# --- Dedupe names: a progress event published twice under one name is logged once ------------------
# Whoever notices a final turn without its terminal event publishes it under this one name.
TERMINAL_DEDUPE = "terminal"
ACCEPTED_DEDUPE = ACCEPTED_EVENT


def step_dedupe(step: Step, phase: StepPhase, round_: int | None = None) -> str:
    """`reason-2-started`, `synthesize-finished`: reason and execute repeat, once per round."""
    return f"{step}-{round_}-{phase}" if round_ else f"{step}-{phase}"


def tool_dedupe(call_id: str) -> str:
    return f"tool-{call_id}"


def tool_started_dedupe(call_id: str) -> str:
    return f"tool-{call_id}-started"


def tool_running_dedupe(call_id: str, report: int) -> str:
    """`tool-r1c0-running-3`: a call's reports are numbered, so a redelivered call logs none twice."""
    return f"tool-{call_id}-running-{report}"


def delta_dedupe(chunk: int) -> str:
    """`token-3`: the fourth piece of the answer's text."""
    return f"token-{chunk}"


def for_browser() -> dict[str, str | list[str]]:
    """The names the page needs, JSON-ready (served as /vocabulary.js): the groups, and each name
    the scripts compare with or dispatch on, under the same constant name as here."""
    groups: dict[str, str | list[str]] = {
        "STATUSES": list(STATUSES), "FINAL_STATUSES": sorted(FINAL_STATUSES), "STEPS": list(STEPS),
        "EVENT_TYPES": list(EVENT_TYPES), "TERMINAL_EVENTS": sorted(TERMINAL_EVENTS),
        "TOOL_PHASES": [TOOL_STARTED, TOOL_RUNNING], "TOOL_FINAL_STATUSES": list(get_args(ToolStatus))}
    names = {"RUNNING": RUNNING, "DONE": DONE, "FAILED": FAILED, "CANCELLED": CANCELLED,
             "DISCOVER": DISCOVER, "REASON": REASON, "EXECUTE": EXECUTE, "SYNTHESIZE": SYNTHESIZE,
             "FINISHED": FINISHED, "TOOL_STARTED": TOOL_STARTED, "TOOL_RUNNING": TOOL_RUNNING,
             "TOOL_OK": TOOL_OK, "TOOL_ERROR": TOOL_ERROR, "TOOL_DENIED": TOOL_DENIED,
             "STEP_EVENT": STEP_EVENT, "TOOL_EVENT": TOOL_EVENT, "DELTA_EVENT": DELTA_EVENT,
             "DONE_EVENT": DONE_EVENT, "ERROR_EVENT": ERROR_EVENT, "CANCELLED_EVENT": CANCELLED_EVENT}
    return {**groups, **names}
