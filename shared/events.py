"""The progress event schema: what a browser receives, one SSE `event:` name per model."""

from typing import Literal

from pydantic import BaseModel, ConfigDict

# discover comes first: a model can only choose among tools it has been shown.
STEPS = ("discover", "reason", "execute", "synthesize")
TERMINAL_EVENTS = frozenset({"done", "error", "cancelled"})


class ProgressEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The turn's OpenTelemetry trace id, when tracing is on (shared.tracing), so a user report maps to a trace.
    trace_id: str | None = None


class StepEvent(ProgressEvent):
    step: Literal["reason", "discover", "execute", "synthesize"]
    status: Literal["started", "finished"]
    duration_ms: float | None = None
    round: int | None = None  # reason and execute repeat: 1, 2, ... up to TURNSTREAM_MAX_TOOL_ROUNDS


# A call's life in `tool` events: `started` when execute dispatches it (before the guards),
# `running` while the tool reports MCP progress, then one final `ok`, `error` or `denied`.
TOOL_FINAL_STATUSES = frozenset({"ok", "error", "denied"})


class ToolEvent(ProgressEvent):
    call_id: str
    tool: str
    args: dict | None = None  # on `started` and the final event; `running` carries only what changed
    status: Literal["started", "running", "ok", "error", "denied"]
    duration_ms: float | None = None  # on the final event
    progress: float | None = None  # `running`: the tool's own progress figures (MCP notifications/progress)
    total: float | None = None
    message: str | None = None
    result_preview: str | None = None
    permission: dict | None = None
    cache: str | None = None
    error: str | None = None


class TokenEvent(ProgressEvent):
    text: str


class DoneEvent(ProgressEvent):
    answer: str


class ErrorEvent(ProgressEvent):
    message: str
    step: str | None = None


class CancelledEvent(ProgressEvent):
    message: str = "cancelled"


EVENT_TYPES: dict[type[ProgressEvent], str] = {
    StepEvent: "step",
    ToolEvent: "tool",
    TokenEvent: "token",
    DoneEvent: "done",
    ErrorEvent: "error",
    CancelledEvent: "cancelled",
}


def event_type(event: ProgressEvent) -> str:
    return EVENT_TYPES[type(event)]
