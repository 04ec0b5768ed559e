"""Whether the turns of open streams have ended: one status read per turn per beat, for all of
its streams, instead of one per stream.

Every stream must end when its turn does, even when the terminal event never reached the
progress store. Asking the broker at each stream's own heartbeat costs one round trip
per stream per beat, and streams that opened together ask together: 1,000 streams were 1,000
reads in a burst every beat, and other users' slowest turns landed on those beats
(bench/README.md, hostile.py). Here one greenlet per web process reads the status of every watched turn once per
beat, in pipelined batches, and wakes only the streams whose turn is final; if the broker cannot
say for a batch, it wakes that batch's streams to close (their clients reconnect, as EventSource
does); the other batches' streams stay open. Streams opening at
once ask for their turn's status through one shared read per turn (single flight), with at most
`OPENING_READS` reads at a time, so a burst of streams cannot take the broker pool that posts need.

Rejected: a status cache with a lifetime (a stream would trust a stale "running" for that long,
and the burst comes back each time it expires); jitter on each stream's own read (spreads the
burst but keeps its cost, one read per stream)."""

import logging
from collections import defaultdict
from collections.abc import Callable

import gevent
import redis
from gevent.event import AsyncResult
from gevent.lock import BoundedSemaphore

from shared import turns
from shared.vocabulary import FINAL_STATUSES
from web.dispatcher import Subscription

log = logging.getLogger(__name__)

TURN_FINAL = object()  # woken: the turn's record is final; the stream ends it (web.stream)
OUTCOME_UNKNOWN = object()  # woken: the broker could not say; the stream closes and its client retries
# Turn status reads in flight at once for streams that are opening (each holds a broker connection).
OPENING_READS = 16
# Turns read per pipelined round trip by the watch.
BATCH = 500

Turn = tuple[str, str]


class TurnWatch:
    def __init__(self, interval_s: float,
                 read_status: Callable[[str, str], str | None] = turns.turn_status,
                 read_statuses: Callable[[list[Turn]], list[str | None]] = turns.turn_statuses):
        self.interval_s = interval_s
        self._read_status = read_status
        self._read_statuses = read_statuses
        self._watched: dict[Turn, set[Subscription]] = defaultdict(set)
        self._reads: dict[Turn, AsyncResult] = {}
        self._opening = BoundedSemaphore(OPENING_READS)
        self._runner: gevent.Greenlet | None = None

    def status(self, session_id: str, message_id: str) -> str | None:
        """The turn's status for a stream that opens, read once for every stream opening on it at
        the same moment. Raises what the read raised (redis.RedisError as turns.turn_status does),
        to every stream that joined it."""
        turn = (session_id, message_id)
        pending = self._reads.get(turn)
        if pending is not None:
            return pending.get()
        pending = self._reads[turn] = AsyncResult()
        try:
            with self._opening:
                pending.set(self._read_status(session_id, message_id))
        except BaseException as exc:  # anything (a bug, a GreenletExit): the joiners must not wait forever
            pending.set_exception(exc)
        finally:
            del self._reads[turn]
        return pending.get()

    def watch(self, sub: Subscription, session_id: str, message_id: str) -> None:
        self._watched[(session_id, message_id)].add(sub)
        if self._runner is None or self._runner.dead:
            self._runner = gevent.spawn(self._run)

    def unwatch(self, sub: Subscription, session_id: str, message_id: str) -> None:
        subs = self._watched.get((session_id, message_id))
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._watched[(session_id, message_id)]

    def _run(self) -> None:
        while self._watched:
            gevent.sleep(self.interval_s)
            try:
                self.check()
            except Exception:  # a bug must not end the watch: every stream of the process relies on it
                log.exception("turn watch beat failed; the next beat tries again")

    def check(self) -> None:
        """Read every watched turn's status, one batch per round trip; wake the streams of final
        turns, and those of a batch whose read failed."""
        watched = list(self._watched)
        for start in range(0, len(watched), BATCH):
            batch = watched[start:start + BATCH]
            try:
                statuses = self._read_statuses(batch)
            except redis.RedisError as exc:
                # Only this batch is unknown: closing every stream would reconnect them all at once.
                log.warning("turn statuses unreadable (%s); closing %d streams, their clients retry",
                            exc, sum(len(self._watched.get(t, ())) for t in batch))
                self._wake(batch, OUTCOME_UNKNOWN)
                continue
            self._wake([turn for turn, status in zip(batch, statuses) if status in FINAL_STATUSES], TURN_FINAL)

    def _wake(self, watched: list[Turn], signal: object) -> None:
        for turn in watched:
            for sub in list(self._watched.get(turn, ())):
                sub.wake(signal)
