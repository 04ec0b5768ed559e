"""Celery task events in batches: what Flower shows, at a fraction of the publishes.

A worker sends `task-received`, `task-started` and `task-succeeded` (or `-failed`) for every
task: three broker PUBLISHes per step, each a kombu message of its own. Celery can buffer a
worker's task events and publish them as one `task.multi` message (a list, which Flower's event
receiver unpacks like single events), but it does so only when the worker runs an event loop
(prefork, and threads on the Redis transport), and there it flushes at the loop's next turn, so
a worker that is not flooded still sends about one message per event; for gevent it publishes
each event at once. Here a gevent or threads worker's dispatcher buffers task events and a
daemon thread (a greenlet under gevent) flushes them every sent_events.FLUSH_S, or sooner when
sent_events.BATCH are waiting (measured: the llm worker's task events cost 1.9 ms of CPU per
turn flushed at each loop turn, the tools worker's 0.8 ms flushed so; bench/README.md). Flower
sees a step at most that much later; nothing else reads task events. Celery's flush takes its
dispatcher's lock and clears only what it published, so the threads pool's threads may go on
sending while it runs. Prefork keeps Celery's own batching (its events come from the main
process's loop, fed by the children; not measured here).

The `task-sent` event of a task a worker sends goes into the same batch (shared.sent_events).

Rejected: turning task events off by default (Flower is how ops watch the workers; it stays
switchable with TURNSTREAM_TASK_EVENTS) and dropping event types (Flower uses each of them)."""

import threading
import time

from shared import sent_events


def batch_task_events(consumer) -> threading.Thread | None:
    """Make `consumer`'s event dispatcher buffer task events, flushed by a thread of its own.
    Prefork keeps Celery's batching: then nothing changes."""
    from celery.concurrency.thread import TaskPool as ThreadsPool

    if getattr(consumer, "hub", None) is not None and not isinstance(consumer.pool, ThreadsPool):
        return None
    flusher = threading.Thread(target=_flush_forever, args=(consumer,), name="task-event-flusher", daemon=True)
    flusher.start()
    return flusher


def _flush_forever(consumer) -> None:
    while True:
        dispatcher = consumer.event_dispatcher  # a new one after each reconnection
        if dispatcher is not None:
            if sent_events.TASK_GROUP not in dispatcher.buffer_group or dispatcher.on_send_buffered is not None:
                dispatcher.buffer_group = frozenset({*dispatcher.buffer_group, sent_events.TASK_GROUP})
                dispatcher.buffer_limit = sent_events.BATCH
                dispatcher.on_send_buffered = None  # no flush at the event loop's next turn: ours
            sent_events.batch_into(dispatcher)  # this process's task-sent events too (shared.sent_events)
            sent_events.flush(dispatcher)
        time.sleep(sent_events.FLUSH_S)
