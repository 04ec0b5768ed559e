"""Received messages, noted beside their task's start instead of before it.

A worker that takes a message of a turn off the queue notes it in its liveness set
(shared.liveness.received_all): should the process die before the step claims the turn, the turn
is sent again at once instead of after the visibility timeout (workers.redelivery). The note
used to be written in the consumer before the message went to the pool, so every step's first
round trips waited behind it. Here the consumer hands it to one writer per process (a daemon
thread; a greenlet under gevent) and goes on: the note and the step's own first round trips
are in flight together, and notes that pile up (a busy worker) go in one command.

What changes: a process killed in the microseconds between taking a message and writing its
note leaves that turn to the visibility timeout, as it did before the note existed; a note that
lands after its step already claimed the turn is dropped by the liveness thread like any other
(shared.turns.forget_moved: once the step claimed the turn here, or the turn ended), and a
worker's death resends a turn for it only while the turn has no runner.
Rejected: writing the note in the task itself with the delivery count, one round trip fewer
but no note for a message that waits in the threads pool's queue behind busy threads."""

import logging
import queue
import threading

from shared import liveness
from shared.redis_stores import client

log = logging.getLogger(__name__)
_pending: "queue.SimpleQueue[tuple[str, str]]" = queue.SimpleQueue()
_writer: threading.Thread | None = None
_lock = threading.Lock()


def note(session_id: str, message_id: str) -> None:
    """Note a received message of the turn, soon (see above)."""
    _pending.put((session_id, message_id))
    if _writer is None or not _writer.is_alive():
        _start_writer()


def _start_writer() -> None:
    global _writer
    with _lock:
        if _writer is None or not _writer.is_alive():
            _writer = threading.Thread(target=_write_forever, name="received-notes", daemon=True)
            _writer.start()


def _write_forever() -> None:
    while True:
        batch = [_pending.get()]
        while True:
            try:
                batch.append(_pending.get_nowait())
            except queue.Empty:
                break
        try:
            liveness.received_all(batch, client("broker"))
        except Exception as exc:  # noqa: BLE001 - the visibility timeout still covers these messages
            log.warning("could not note %d received messages (%r); the visibility timeout covers them", len(batch), exc)
