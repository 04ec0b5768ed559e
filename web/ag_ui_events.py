"""Our progress events as AG-UI events: the one place that maps one vocabulary onto the other.

The turn's event log stays the source of truth; an AG-UI stream is a view of it, translated
event by event, so the SSE `id:` of every AG-UI event is the log id of the event it came from
and a client rejoining with Last-Event-ID resumes exactly like one of our own streams.

| ours | AG-UI |
| --- | --- |
| (stream opens) | RUN_STARTED |
| step started / finished | STEP_STARTED / STEP_FINISHED, `stepName` = step, or `step-round` (`reason-2`) |
| tool `started` | TOOL_CALL_START, TOOL_CALL_ARGS (the arguments as JSON), TOOL_CALL_END |
| tool `running` | CUSTOM `turnstream.tool_progress` (AG-UI has no progress event) |
| tool `ok` / `error` / `denied` | TOOL_CALL_RESULT, content = the result preview or the error |
| first `token` | TEXT_MESSAGE_START (role assistant), then TEXT_MESSAGE_CONTENT per token |
| `done` | TEXT_MESSAGE_END, RUN_FINISHED (`result`: the answer) |
| `error` | RUN_ERROR with its readable message, `code` = `<step>_failed` |
| `cancelled` | RUN_FINISHED with `outcome: {"type": "cancelled"}` |

The protocol has ordering rules its reference client checks (no RUN_FINISHED while a step or a
text message is open, no event after the run ends, a tool call started once), and our log can
end a turn mid-step (a cancel). So the translation is stateful: it remembers the open steps,
the open message and the started calls, and closes what is still open before the run ends.
Rejected alternative: writing AG-UI events into the log next to ours. Two logs of one turn
could disagree, and every consumer of ours would pay for a format it does not read.

Ids: a tool call's id is `<runId>-<call_id>` and the answer's message id `<runId>-answer`,
because AG-UI clients keep every run's messages in one list and our call ids (`r1c0`) repeat
from turn to turn."""

import json
from collections.abc import Callable, Iterator

from ag_ui.core import (BaseEvent, CustomEvent, RunErrorEvent, RunFinishedCancelledOutcome, RunFinishedEvent,
                        RunStartedEvent, StepFinishedEvent, StepStartedEvent, TextMessageContentEvent,
                        TextMessageEndEvent, TextMessageStartEvent, ToolCallArgsEvent, ToolCallEndEvent,
                        ToolCallResultEvent, ToolCallStartEvent)
from ag_ui.encoder import EventEncoder

from shared.progress import LoggedEvent
from shared.vocabulary import (CANCELLED_EVENT, DELTA_EVENT, DONE_EVENT, ERROR_EVENT, FINISHED, STARTED, STEP_EVENT,
                               TOOL_EVENT, TOOL_FINAL_STATUSES, TOOL_OK, TOOL_RUNNING, EventType)

TOOL_PROGRESS = "turnstream.tool_progress"


class RunTranslator:
    """Translates one run's logged events, in log order, into AG-UI events."""

    def __init__(self, thread_id: str, run_id: str):
        self.thread_id = thread_id
        self.run_id = run_id
        self._open_steps: list[str] = []
        self._message_open = False
        self._started_calls: set[str] = set()
        self.ended = False

    @property
    def answer_id(self) -> str:
        return f"{self.run_id}-answer"

    def tool_call_id(self, call_id: str) -> str:
        return f"{self.run_id}-{call_id}"

    def run_started(self) -> RunStartedEvent:
        return RunStartedEvent(thread_id=self.thread_id, run_id=self.run_id)

    def translate(self, event: LoggedEvent) -> list[BaseEvent]:
        """The AG-UI events for one of ours; none once the run has ended (or for unknown types)."""
        handlers: dict[EventType, Callable[[dict], Iterator[BaseEvent]]] = {
            STEP_EVENT: self._on_step, TOOL_EVENT: self._on_tool, DELTA_EVENT: self._on_delta,
            DONE_EVENT: self._on_done, ERROR_EVENT: self._on_error, CANCELLED_EVENT: self._on_cancelled}
        handler = handlers.get(event.type)  # type: ignore[call-overload]
        if self.ended or handler is None:
            return []
        return list(handler(json.loads(event.data)))

    # --- one method per event type of ours --------------------------------------------------
    def _on_step(self, data: dict) -> Iterator[BaseEvent]:
        name = f"{data['step']}-{data['round']}" if data.get("round") else data["step"]
        if data["status"] == STARTED and name not in self._open_steps:
            self._open_steps.append(name)
            yield StepStartedEvent(step_name=name)
        elif data["status"] == FINISHED and name in self._open_steps:
            self._open_steps.remove(name)
            yield StepFinishedEvent(step_name=name)

    def _on_tool(self, data: dict) -> Iterator[BaseEvent]:
        call_id = self.tool_call_id(data["call_id"])
        if data["status"] == TOOL_RUNNING:
            yield CustomEvent(name=TOOL_PROGRESS, value={"toolCallId": call_id, **{
                k: data[k] for k in ("tool", "progress", "total", "message") if data.get(k) is not None}})
            return
        if call_id not in self._started_calls:
            # A final event whose `started` is missing (a log from before `started` existed,
            # or one dropped while the progress store was down) still opens the call first.
            self._started_calls.add(call_id)
            yield ToolCallStartEvent(tool_call_id=call_id, tool_call_name=data["tool"])
            yield ToolCallArgsEvent(tool_call_id=call_id, delta=json.dumps(data.get("args") or {}))
            yield ToolCallEndEvent(tool_call_id=call_id)
        if data["status"] in TOOL_FINAL_STATUSES:
            yield ToolCallResultEvent(message_id=f"{call_id}-result", tool_call_id=call_id, role="tool",
                                      content=_tool_content(data))

    def _on_delta(self, data: dict) -> Iterator[BaseEvent]:
        if not data.get("text"):
            return
        if not self._message_open:
            self._message_open = True
            yield TextMessageStartEvent(message_id=self.answer_id, role="assistant")
        yield TextMessageContentEvent(message_id=self.answer_id, delta=data["text"])

    def _on_done(self, data: dict) -> Iterator[BaseEvent]:
        if not self._message_open and data.get("answer"):
            # The answer arrived without tokens (their events were lost): send it whole.
            yield from self._on_delta({"text": data["answer"]})
        yield from self._close()
        yield RunFinishedEvent(thread_id=self.thread_id, run_id=self.run_id, result={"answer": data.get("answer", "")})

    def _on_error(self, data: dict) -> Iterator[BaseEvent]:
        self.ended = True
        code = f"{data['step']}_failed" if data.get("step") else "turn_failed"
        yield RunErrorEvent(message=data.get("message") or "the turn failed", code=code)

    def _on_cancelled(self, data: dict) -> Iterator[BaseEvent]:
        yield from self._close()
        yield RunFinishedEvent(thread_id=self.thread_id, run_id=self.run_id, outcome=RunFinishedCancelledOutcome())

    def _close(self) -> Iterator[BaseEvent]:
        """Close the open message and steps: RUN_FINISHED may not leave either open."""
        self.ended = True
        if self._message_open:
            self._message_open = False
            yield TextMessageEndEvent(message_id=self.answer_id)
        while self._open_steps:
            yield StepFinishedEvent(step_name=self._open_steps.pop())


def _tool_content(data: dict) -> str:
    if data["status"] == TOOL_OK:
        return data.get("result_preview") or ""
    return json.dumps({"status": data["status"], "error": data.get("error") or data["status"]})


_ENCODER = EventEncoder()


def encode(events: list[BaseEvent], event_id: str | None = None) -> str:
    """SSE text for AG-UI events, each encoded by ag-ui-protocol's EventEncoder, with the log id
    of the event they came from as `id:` so a reconnecting client can say where it was."""
    prefix = f"id: {event_id}\n" if event_id else ""
    return "".join(prefix + _ENCODER.encode(event) for event in events)
