"""The translation of our events into AG-UI events, on hand-made logs: the cases a real turn
rarely produces (a denied call, a cancel mid-step, a failure mid-answer, a lost `started`)."""

import json

from ag_ui.core import EventType

from shared.events import (CancelledEvent, DeltaEvent, DoneEvent, ErrorEvent, ProgressEvent, StepEvent, ToolEvent,
                           event_type)
from shared.progress import LoggedEvent
from web.ag_ui_events import RunTranslator, encode


def translate(*events: ProgressEvent) -> list:
    translator = RunTranslator("t1", "r1")
    out = [translator.run_started()]
    for n, event in enumerate(events):
        logged = LoggedEvent(id=f"{1000 + n}-0", type=event_type(event), data=event.model_dump_json(exclude_none=True))
        out += translator.translate(logged)
    return out


def test_a_denied_call_opens_and_answers_the_call_with_the_denial():
    out = translate(ToolEvent(call_id="r1c0", tool="create_ticket", args={"subject": "x"}, status="started"),
                    ToolEvent(call_id="r1c0", tool="create_ticket", args={"subject": "x"}, status="denied",
                              duration_ms=3, error="You may not use create_ticket"))
    assert [e.type for e in out[1:]] == [EventType.TOOL_CALL_START, EventType.TOOL_CALL_ARGS, EventType.TOOL_CALL_END,
                                         EventType.TOOL_CALL_RESULT]
    assert out[1].tool_call_id == "r1-r1c0" and json.loads(out[2].delta) == {"subject": "x"}
    assert json.loads(out[4].content) == {"status": "denied", "error": "You may not use create_ticket"}


def test_a_final_event_without_its_started_still_opens_the_call_once():
    out = translate(ToolEvent(call_id="r1c0", tool="weather", args={"city": "Paris"}, status="ok", duration_ms=1,
                              result_preview='{"temp_c": 14}'))
    assert [e.type for e in out[1:]] == [EventType.TOOL_CALL_START, EventType.TOOL_CALL_ARGS, EventType.TOOL_CALL_END,
                                         EventType.TOOL_CALL_RESULT]


def test_progress_is_a_custom_event():
    out = translate(ToolEvent(call_id="r1c0", tool="sales_report", args={}, status="started"),
                    ToolEvent(call_id="r1c0", tool="sales_report", status="running", progress=1, total=4,
                              message="Totalling by item"))
    assert out[-1].type == EventType.CUSTOM
    assert out[-1].value == {"toolCallId": "r1-r1c0", "tool": "sales_report", "progress": 1, "total": 4,
                             "message": "Totalling by item"}


def test_a_cancel_mid_step_and_mid_answer_closes_both_before_the_run_finishes():
    out = translate(StepEvent(step="synthesize", status="started"), DeltaEvent(text="Half an "),
                    CancelledEvent(), DeltaEvent(text="late"))
    assert [e.type for e in out] == [EventType.RUN_STARTED, EventType.STEP_STARTED, EventType.TEXT_MESSAGE_START,
                                     EventType.TEXT_MESSAGE_CONTENT, EventType.TEXT_MESSAGE_END,
                                     EventType.STEP_FINISHED, EventType.RUN_FINISHED]
    assert out[-1].outcome.type == "cancelled"


def test_a_failure_is_a_run_error_naming_the_step():
    out = translate(StepEvent(step="reason", status="started", round=1),
                    ErrorEvent(message="reason failed: the model timed out", step="reason"))
    assert (out[-1].type, out[-1].message, out[-1].code) == (EventType.RUN_ERROR, "reason failed: the model timed out",
                                                             "reason_failed")


def test_an_answer_without_tokens_is_sent_whole():
    out = translate(DoneEvent(answer="All done."))
    assert [e.type for e in out[1:]] == [EventType.TEXT_MESSAGE_START, EventType.TEXT_MESSAGE_CONTENT,
                                         EventType.TEXT_MESSAGE_END, EventType.RUN_FINISHED]
    assert out[2].delta == "All done." and out[-1].result == {"answer": "All done."}


def test_encoding_puts_the_log_id_on_every_event_of_a_group():
    out = translate(ToolEvent(call_id="c", tool="weather", args={}, status="started"))
    text = encode(out[1:], "1000-0")
    blocks = [b for b in text.split("\n\n") if b]
    assert len(blocks) == 3 and all(b.startswith("id: 1000-0\ndata: {") for b in blocks)
