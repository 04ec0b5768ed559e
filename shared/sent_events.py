"""Celery's `task-sent` events, batched where the sender is a worker that batches its own.

With task events on (Flower), each task sent also publishes a `task-sent` event: one broker
PUBLISH of its own, in the sending step, right after the task's message (three per idle turn
from the workers: discover sends reason, reason a tool call, the call its collect). A gevent or
threads worker already buffers its `task-received`/`-started`/`-succeeded` events and publishes
them every TASK_EVENTS_FLUSH_S as one `task.multi` message (workers.task_events). Here the app's
event dispatcher for sent events hands `task-sent` to that same buffer when one is registered
(`batch_into`), so it leaves with the next batch; Flower unpacks `task.multi` as it does the
worker's own events, and sees the event at most that much later.

Rules:
- Only `task-sent`, and only when a worker registered its dispatcher; everywhere else (the web
  tier, a prefork child, a process with task events off, the bench's bare chain) Celery
  publishes it at once, as before.
- The event keeps the fields Celery gives it (redacted by shared.redaction, which builds them).

Rejected: not sending `task-sent` (`task_send_sent_event` off). Flower shows a task waiting in
a queue as SENT only from that event; the cost was the extra PUBLISH, not the event."""

from functools import cached_property

from celery.events import EventDispatcher
from celery.events.event import Event

from shared.redaction import RedactingAMQP

TASK_SENT = "task-sent"
_batch: EventDispatcher | None = None


def batch_into(dispatcher: EventDispatcher | None) -> None:
    """Send this process's `task-sent` events through `dispatcher`'s buffer (None: publish them at once)."""
    global _batch
    _batch = dispatcher


class SentEventDispatcher(EventDispatcher):
    """The dispatcher Celery's task sender publishes `task-sent` with (see the module docstring)."""

    def publish(self, type, fields, producer, blind=False, Event=Event, **kwargs):
        batch = _batch
        if type == TASK_SENT and batch is not None and batch.enabled:
            batch.send(type, **fields)
            return None
        return super().publish(type, fields, producer, blind=blind, Event=Event, **kwargs)


class BatchingAMQP(RedactingAMQP):
    """The app's AMQP: redacted task reprs (shared.redaction), `task-sent` through SentEventDispatcher."""

    @cached_property
    def _event_dispatcher(self) -> EventDispatcher:
        # Like Celery's own: Celery hands it the producer to publish with, so it is not enabled itself.
        return SentEventDispatcher(app=self.app, enabled=False)
