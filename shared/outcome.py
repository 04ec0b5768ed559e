"""A turn's outcome as an event: the terminal event (done, error, cancelled) that matches
its status record, published at most once.

The status record lives on the broker (persistent); the event log on the progress
instance (not persistent). If the progress instance was down or restarted when a turn
ended, the log lacks its terminal event and a stream would wait forever. Whoever notices
(a worker finishing, a cancelling request, a stream opening) publishes the outcome again
with the dedupe name "terminal": the log ends up with exactly one terminal event."""

from shared.events import CancelledEvent, DoneEvent, ErrorEvent, ProgressEvent
from shared.progress import Publisher
from shared.turns import CANCELLED, DONE, FAILED

TERMINAL_DEDUPE = "terminal"


def terminal_event(record: dict | None) -> ProgressEvent | None:
    """The event that ends a turn in this state; None while it is not final."""
    status = (record or {}).get("status")
    if status == DONE:
        return DoneEvent(answer=record.get("answer", ""))
    if status == FAILED:
        return ErrorEvent(message=record.get("error") or "the turn failed", step=record.get("step") or None)
    if status == CANCELLED:
        return CancelledEvent()
    return None


def publish_outcome(session_id: str, message_id: str, record: dict | None,
                    publisher: Publisher | None = None) -> str | None:
    """Publish the turn's terminal event unless the log already has it; None if the turn is not final."""
    event = terminal_event(record)
    if event is None:
        return None
    return (publisher or Publisher(session_id, message_id)).publish(event, dedupe=TERMINAL_DEDUPE)
