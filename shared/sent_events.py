"""Celery's `task-sent` events, published in batches instead of one PUBLISH per task sent.

With task events on (Flower), each task sent also publishes a `task-sent` event: one broker
PUBLISH of its own, right after the task's message, in the sender's path (the web tier's POST,
a worker's step). A gevent or threads worker already buffers its `task-received`/`-started`/
`-succeeded` events and publishes them every FLUSH_S as one `task.multi` message
(workers.task_events). Here the app's event dispatcher for sent events hands `task-sent` to a
buffer instead, which leaves with the next batch; Flower unpacks `task.multi` as it does a
worker's own events, and sees the event at most FLUSH_S later.

Rules:
- A worker registers its own dispatcher's buffer (`batch_into`, from workers.task_events).
- A process that sends tasks and runs no worker, the web tier, gets a buffer of its own
  (`batch_here`) with a daemon thread (a greenlet under gunicorn's gevent) that flushes it every
  FLUSH_S, and once more at exit. A POST then waits on four round trips, not five.
- Everywhere else (a prefork child, a process with task events off, the bench's bare chain)
  Celery publishes `task-sent` at once, as it does by default.
- The event keeps the fields Celery gives it (redacted by shared.redaction, which builds them).
- A broker outage loses none: Celery's dispatcher keeps what it could not publish
  (`buffer_while_offline`) and the next flush sends it once the broker is back (redis-py
  reconnects on the next command).

Rejected: not sending `task-sent` (`task_send_sent_event` off). Flower shows a task waiting in
a queue as SENT only from that event; the cost was the extra PUBLISH, not the event."""

import atexit
import logging
import threading
import time
from functools import cached_property

from celery import Celery
from celery.events import EventDispatcher
from celery.events.event import Event

from shared.redaction import RedactingAMQP

log = logging.getLogger(__name__)

TASK_SENT = "task-sent"
TASK_GROUP = "task"
# How often buffered task events are published, and how many wait at most before they are.
FLUSH_S = 0.1
BATCH = 64
_batch: EventDispatcher | None = None


def batch_into(dispatcher: EventDispatcher | None) -> None:
    """Send this process's `task-sent` events through `dispatcher`'s buffer (None: publish them at once)."""
    global _batch
    _batch = dispatcher


def batch_here(app: Celery) -> EventDispatcher | None:
    """For a process that sends tasks and runs no worker: its `task-sent` events in a buffer of
    its own, flushed every FLUSH_S by a daemon thread and at exit. Call it once per process after
    any fork (gunicorn runs the app factory in each worker). Nothing connects until the first
    flush with something to send. None if task events are off."""
    if not app.conf.task_send_sent_event:
        return None
    dispatcher = app.events.Dispatcher(app.connection_for_write(), enabled=True, buffer_group=[TASK_GROUP],
                                       buffer_limit=BATCH)
    batch_into(dispatcher)
    threading.Thread(target=_flush_forever, args=(dispatcher,), name="task-sent-flusher", daemon=True).start()
    atexit.register(flush, dispatcher)
    return dispatcher


def flush(dispatcher: EventDispatcher) -> None:
    """Publish what `dispatcher` holds; a failure is left for the next flush (monitoring must
    never stop a web process or a worker)."""
    try:
        dispatcher.flush(errors=True, groups=True)
    except Exception as exc:  # noqa: BLE001 - see above
        log.debug("task events not flushed: %s", exc)


def _flush_forever(dispatcher: EventDispatcher) -> None:
    while True:
        time.sleep(FLUSH_S)
        flush(dispatcher)


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
