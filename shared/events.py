"""The progress event schema: what a browser receives, one SSE `event:` name per model (the names:
shared.vocabulary)."""

from pydantic import BaseModel, ConfigDict

from shared.vocabulary import (ACCEPTED_EVENT, CANCELLED_EVENT, DELTA_EVENT, DONE_EVENT, ERROR_EVENT, QUEUED, STEP_EVENT,
                               TOOL_EVENT, EventType, ExecCacheResult, Step, StepPhase, ToolEventStatus, TurnStatus)


class ProgressEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The turn's OpenTelemetry trace id, when tracing is on (shared.tracing), so a user report maps to a trace.
    trace_id: str | None = None


class AcceptedEvent(ProgressEvent):
    """The turn is recorded and queued (the web tier logs it before answering 202)."""

    status: TurnStatus = QUEUED


class StepEvent(ProgressEvent):
    step: Step
    status: StepPhase
    duration_ms: float | None = None
    round: int | None = None  # reason and execute repeat: 1, 2, ... up to TURNSTREAM_MAX_TOOL_ROUNDS


class ToolEvent(ProgressEvent):
    call_id: str
    tool: str
    args: dict | None = None  # on `started` and the final event; `running` carries only what changed
    status: ToolEventStatus
    duration_ms: float | None = None  # on the final event
    progress: float | None = None  # `running`: the tool's own figures (MCP notifications/progress)
    total: float | None = None
    message: str | None = None
    result_preview: str | None = None
    permission: dict | None = None
    cache: ExecCacheResult | None = None
    error: str | None = None


class DeltaEvent(ProgressEvent):
    """A piece of the answer's text (SSE `event: token`; a "token" in this code is always a signed one)."""

    text: str


class DoneEvent(ProgressEvent):
    answer: str


class ErrorEvent(ProgressEvent):
    message: str
    step: str | None = None


class CancelledEvent(ProgressEvent):
    message: str = "cancelled"


EVENT_MODELS: dict[type[ProgressEvent], EventType] = {
    AcceptedEvent: ACCEPTED_EVENT,
    StepEvent: STEP_EVENT,
    ToolEvent: TOOL_EVENT,
    DeltaEvent: DELTA_EVENT,
    DoneEvent: DONE_EVENT,
    ErrorEvent: ERROR_EVENT,
    CancelledEvent: CANCELLED_EVENT,
}


def event_type(event: ProgressEvent) -> EventType:
    return EVENT_MODELS[type(event)]
