"""The SSE endpoint, built on flask-sse's blueprint and Message.

Three separate concerns, as in Mercure: authorization (a stream token scoped to the
turn), the event log (shared.progress: storage and replay) and fan-out (web.dispatcher).
A stream subscribes first, then replays the log after Last-Event-ID, then drops live
events it already sent, so a reconnecting client sees every event exactly once."""

import logging
import random
from collections.abc import Iterable, Iterator

import redis
from flask import request
from flask_sse import ServerSentEventsBlueprint

from shared import keys, metrics, outbox, turns
from shared.identity import TokenError
from shared.progress import LoggedEvent, entry_order, last_entry_id, read_log
from shared.settings import get_settings
from shared.terminal_event import publish_terminal_event
from shared.vocabulary import FINAL_STATUSES
from web import extensions
from web.api import event_id_param
from web.auth import stream_principal
from web.dispatcher import CLOSE, Dispatcher, SubscribeTimeout
from web.errors import ApiError
from web.turn_watch import OUTCOME_UNKNOWN, TURN_FINAL
from web.sse import sse_response

log = logging.getLogger(__name__)
# A stream's heartbeat comes after this share of TURNSTREAM_SSE_HEARTBEAT_S or more, at random.
HEARTBEAT_SPREAD = 0.8


class StatusUnknown(Exception):
    """The turn's record (broker) or its log (progress) could not be read: the stream cannot
    tell whether the turn ended, so it closes and the client reconnects."""


class TurnStreamBlueprint(ServerSentEventsBlueprint):
    """flask-sse's blueprint, with replay, heartbeats, shared subscriptions and per-turn tokens.

    Every stream ends. After its replay it reads the turn's record, and while it is open the
    process's turn watch reads it once per heartbeat period (web.turn_watch): a final turn gets
    its terminal event (put back into the log if the log lacks it) and the stream closes. If
    that check fails, the stream closes at once and EventSource reconnects after the `retry:`
    hint. A Last-Event-ID beyond the log counts as the end of the log."""

    def dispatcher(self) -> Dispatcher:
        return extensions.dispatcher()

    def stream(self, session_id: str, message_id: str):
        channel = keys.progress_channel(session_id, message_id)
        self._authorize(session_id, message_id)
        after = event_id_param(request.headers.get("Last-Event-ID") or request.args.get("last_event_id"),
                               "Last-Event-ID")
        events = self.events(channel, session_id, message_id, after)
        return sse_response(self._render(events), get_settings().sse_retry_ms, "stream open", with_first=True)

    def _authorize(self, session_id: str, message_id: str) -> None:
        try:
            stream_principal(session_id, message_id)
        except TokenError as exc:
            raise ApiError(403, "forbidden", f"this token does not grant this stream: {exc}") from exc

    def _ended_at_open(self, session_id: str, message_id: str) -> bool:
        """Whether the turn is final when its stream opens, asked once its replay is sent and
        lacks the terminal event (one read shared by every stream opening on it at that moment:
        web.turn_watch). A turn without a record is not final: its events come from the log alone
        (publishers that keep no record, such as the benchmarks, stream this way). Raises
        StatusUnknown if the broker cannot say."""
        try:
            status = extensions.turn_watch().status(session_id, message_id)
        except redis.RedisError as exc:
            raise StatusUnknown(str(exc)) from exc
        return status in FINAL_STATUSES and self._terminal_logged(session_id, message_id)

    @staticmethod
    def _terminal_logged(session_id: str, message_id: str) -> bool:
        """For a final turn: True once its terminal event is in the log (put back from the record
        if the progress store lost it); False while the outbox still holds its last events, the
        terminal one among them, which reach the log from there. Raises StatusUnknown if either
        store cannot say."""
        try:
            if outbox.waiting(session_id, message_id):
                return False
            publish_terminal_event(session_id, message_id, turns.get_turn(session_id, message_id))
            return True
        except redis.RedisError as exc:
            raise StatusUnknown(str(exc)) from exc

    def events(self, channel: str, session_id: str, message_id: str,
               after: str | None) -> Iterator[list[LoggedEvent] | None]:
        """Logged then live events after `after`, in batches: the replay first (at once, even
        empty), then each event with those queued behind it, which the stream writes in one go
        (one send instead of one per event). None means "send a heartbeat"."""
        heartbeat = get_settings().sse_heartbeat_s
        log_redis = extensions.stream_redis()
        watch = extensions.turn_watch()
        try:
            sub = self.dispatcher().subscribe(channel)
        except (SubscribeTimeout, redis.RedisError) as exc:
            log.warning("stream %s closed at once (the client retries): %s", channel, exc)
            return
        watch.watch(sub, session_id, message_id)
        try:
            after = self._within_log(session_id, message_id, after, log_redis)
            replay = _until_terminal(read_log(session_id, message_id, after=after, r=log_redis))
            # The replay goes out before the turn's record is read: a new turn's first event
            # waits on two round trips (subscribe, replay), not three.
            yield replay
            if replay and replay[-1].terminal:
                return
            last = replay[-1].id if replay else after
            if self._ended_at_open(session_id, message_id):  # final, and the log lacked its terminal event
                yield _until_terminal(read_log(session_id, message_id, after=last, r=log_redis))
                return
            while True:
                # Each beat a little early, at random: streams opened together do not beat together.
                first = sub.get(timeout=heartbeat * random.uniform(HEARTBEAT_SPREAD, 1.0))
                if first is None:
                    yield None
                    continue
                batch: list[LoggedEvent] = []
                for item in [first, *sub.ready()]:
                    if item is CLOSE:
                        log.info("stream %s closed: %s", channel, sub.closed_reason)
                        yield batch
                        return
                    if item is OUTCOME_UNKNOWN:
                        log.warning("stream %s ended (the client retries): the broker cannot say whether "
                                    "its turn ended", channel)
                        yield batch
                        return
                    if item is TURN_FINAL:
                        if batch:  # sent before the reads below, which may fail and end the stream
                            yield batch
                            batch = []
                        if self._terminal_logged(session_id, message_id):
                            # The terminal event was dropped on its way here (a progress outage, a
                            # breaker open in the worker): it is in the log now; send what is left.
                            yield _until_terminal(read_log(session_id, message_id, after=last, r=log_redis))
                            return
                        continue
                    if last and entry_order(item.id) <= entry_order(last):
                        continue
                    batch.append(item)
                    last = item.id
                    if item.terminal:
                        yield batch
                        return
                if batch:
                    yield batch
        except (StatusUnknown, redis.RedisError) as exc:
            log.warning("stream %s ended (the client retries): %s", channel, exc)
        finally:
            watch.unwatch(sub, session_id, message_id)
            self.dispatcher().unsubscribe(sub)

    @staticmethod
    def _within_log(session_id: str, message_id: str, after: str | None, r: redis.Redis) -> str | None:
        """`after`, or the log's last id if `after` lies beyond it: otherwise every later event,
        the terminal one included, would look already sent and be dropped."""
        if after is None:
            return None
        newest = last_entry_id(session_id, message_id, r)
        if newest is None or entry_order(after) > entry_order(newest):
            return newest
        return after

    def _render(self, batches: Iterator[list[LoggedEvent] | None]) -> Iterator[str]:
        """SSE text: a heartbeat comment for None, else the batch's events in one chunk. The
        first (the replay) is yielded even when empty: sse_response sends it with its opening."""
        first = True
        for batch in batches:
            if batch is None:
                yield ": heartbeat\n\n"
            elif batch or first:
                yield "".join(event.sse for event in batch)
                metrics.SSE_EVENTS_SENT.inc(len(batch))
            first = False


def _until_terminal(events: Iterable[LoggedEvent]) -> list[LoggedEvent]:
    """The events up to the first terminal one, which ends a stream (later ones are not sent)."""
    kept = []
    for event in events:
        kept.append(event)
        if event.terminal:
            break
    return kept


stream = TurnStreamBlueprint("stream", __name__)
stream.add_url_rule("/stream/<session_id>/<message_id>", endpoint="stream", view_func=stream.stream)
