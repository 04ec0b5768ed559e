"""Celery task events in batches: what Flower shows, at a fraction of the publishes.

A worker sends `task-received`, `task-started` and `task-succeeded` (or `-failed`) for every
task: three broker PUBLISHes per step, each a kombu message of its own. Celery can buffer a
worker's task events and publish them as one `task.multi` message (a list, which Flower's event
receiver unpacks like single events), but it does so only when the worker runs an event loop
(prefork, and threads on the Redis transport); for gevent it publishes each event at once. Here a worker's dispatcher buffers task
events the same way and a daemon thread (a greenlet under gevent) flushes them every
TASK_EVENTS_FLUSH_S, or sooner when TASK_EVENTS_BATCH are waiting. Flower sees a step at most that
much later; nothing else reads task events.

Rejected: turning task events off by default (Flower is how ops watch the workers; it stays
switchable with TURNSTREAM_TASK_EVENTS) and dropping event types (Flower uses each of them)."""

import logging
import threading
import time

log = logging.getLogger(__name__)

TASK_EVENTS_FLUSH_S = 0.1
TASK_EVENTS_BATCH = 64
TASK_GROUP = "task"


def batch_task_events(consumer) -> threading.Thread | None:
    """Make `consumer`'s event dispatcher buffer task events, flushed by a thread of its own.
    A pool with an event loop (prefork) already batches them: then nothing changes."""
    if getattr(consumer, "hub", None) is not None:
        return None
    flusher = threading.Thread(target=_flush_forever, args=(consumer,), name="task-event-flusher", daemon=True)
    flusher.start()
    return flusher


def _flush_forever(consumer) -> None:
    while True:
        dispatcher = consumer.event_dispatcher  # a new one after each reconnection
        if dispatcher is not None:
            if TASK_GROUP not in dispatcher.buffer_group:
                dispatcher.buffer_group = frozenset({*dispatcher.buffer_group, TASK_GROUP})
                dispatcher.buffer_limit = TASK_EVENTS_BATCH
            try:
                dispatcher.flush(errors=True, groups=True)
            except Exception as exc:  # noqa: BLE001 - monitoring must never stop a worker
                log.debug("task events not flushed: %s", exc)
        time.sleep(TASK_EVENTS_FLUSH_S)
