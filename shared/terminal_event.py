"""The terminal event of a turn (done, error, cancelled): the one that matches its record's
final status, published at most once.

The record lives on the broker (persistent); the event log on the progress instance (not
persistent). If the progress instance was down or restarted when a turn ended, the log lacks
its terminal event and a stream would wait forever. Whoever notices (a worker finishing, a
cancelling request, a stream opening) publishes it again under the dedupe name
TERMINAL_DEDUPE: the log ends up with exactly one terminal event."""

from shared.events import CancelledEvent, DoneEvent, ErrorEvent, ProgressEvent
from shared.progress import Publisher
from shared.turns import TurnRecord
from shared.vocabulary import CANCELLED, DONE, FAILED, TERMINAL_DEDUPE


def terminal_event(record: TurnRecord | None) -> ProgressEvent | None:
    """The event that ends a turn in this state; None while it is not final."""
    status = record.status if record else None
    if status == DONE:
        return DoneEvent(answer=record.answer or "")
    if status == FAILED:
        return ErrorEvent(message=record.error or "the turn failed", step=record.step or None)
    if status == CANCELLED:
        return CancelledEvent()
    return None


def publish_terminal_event(session_id: str, message_id: str, record: TurnRecord | None,
                           publisher: Publisher | None = None) -> str | None:
    """Publish the turn's terminal event unless the log already has it; None if the turn is not final."""
    event = terminal_event(record)
    if event is None:
        return None
    return (publisher or Publisher(session_id, message_id)).publish(event, dedupe=TERMINAL_DEDUPE)
