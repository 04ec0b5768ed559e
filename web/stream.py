"""The SSE endpoint, built on flask-sse's blueprint and Message.

Three separate concerns, as in Mercure: authorization (a stream token scoped to the
turn), the event log (shared.progress: storage and replay) and fan-out (web.dispatcher).
A stream subscribes first, then replays the log after Last-Event-ID, then drops live
events it already sent, so a reconnecting client sees every event exactly once.

A stream ends with its turn's terminal event even when that event never reached the log (the
progress store was down, or its writer's breaker was still open, when the turn ended): the
record on the broker is checked when the stream opens and again at every heartbeat, and a
final record puts its terminal event back. Checking only at the open was rejected: a stream
opened while the event was being lost would then send heartbeats forever."""

import logging
from collections.abc import Iterator

import redis
from flask import request
from flask_sse import ServerSentEventsBlueprint

from shared import keys, metrics, turns
from shared.identity import TokenError, verify_stream_token
from shared.progress import LoggedEvent, Publisher, entry_order, read_log, valid_entry_id
from shared.settings import get_settings
from shared.terminal_event import publish_terminal_event
from web import extensions
from web.auth import query_token
from web.dispatcher import CLOSE, Dispatcher, SubscribeTimeout
from web.errors import ApiError
from web.sse import sse_response

log = logging.getLogger(__name__)


class TurnStreamBlueprint(ServerSentEventsBlueprint):
    """flask-sse's blueprint, with replay, heartbeats, shared subscriptions and per-turn tokens."""

    def dispatcher(self) -> Dispatcher:
        return extensions.dispatcher()

    def stream(self, session_id: str, message_id: str):
        channel = keys.progress_channel(session_id, message_id)
        self._authorize(session_id, message_id)
        self._restore_terminal_event(session_id, message_id)
        after = valid_entry_id(request.headers.get("Last-Event-ID") or request.args.get("last_event_id"))
        events = self.events(channel, session_id, message_id, after)
        return sse_response(self._render(events), get_settings().sse_retry_ms, "stream open")

    def _authorize(self, session_id: str, message_id: str) -> None:
        try:
            verify_stream_token(query_token("stream"), session_id, message_id)
        except TokenError as exc:
            raise ApiError(403, "forbidden", f"this token does not grant this stream: {exc}") from exc

    def _restore_terminal_event(self, session_id: str, message_id: str) -> bool:
        """A turn that ended while the progress store was down has no terminal event in the log:
        put it back from the status record (once), so the stream ends instead of waiting forever.
        True if the turn is final and its terminal event is now in the log.

        It writes with the client the stream replays the log with, not the progress role's
        breaker-guarded one: a breaker still open from the outage would refuse the write while
        the replay, a moment later, reads a log without the event."""
        try:
            record = turns.get_turn(session_id, message_id)
            publisher = Publisher(session_id, message_id, r=extensions.stream_redis())
            return publish_terminal_event(session_id, message_id, record, publisher) is not None
        except redis.RedisError as exc:
            log.info("terminal event of %s/%s not checked: %s", session_id, message_id, exc)
            return False

    def events(self, channel: str, session_id: str, message_id: str, after: str | None) -> Iterator[LoggedEvent | None]:
        """Logged then live events after `after`; None means "send a heartbeat"."""
        heartbeat = get_settings().sse_heartbeat_s
        try:
            sub = self.dispatcher().subscribe(channel)
        except (SubscribeTimeout, redis.RedisError) as exc:
            log.warning("cannot subscribe to %s: %s", channel, exc)
            return
        try:
            last = after
            for event in read_log(session_id, message_id, after=after, r=extensions.stream_redis()):
                yield event
                last = event.id
                if event.terminal:
                    return
            while True:
                item = sub.get(timeout=heartbeat)
                if item is CLOSE:
                    log.info("stream %s closed: %s", channel, sub.closed_reason)
                    return
                if item is None:
                    if self._restore_terminal_event(session_id, message_id):
                        # Replayed from the log rather than awaited live: a terminal event that was
                        # already logged is not published again.
                        for event in read_log(session_id, message_id, after=last, r=extensions.stream_redis()):
                            yield event
                            last = event.id
                            if event.terminal:
                                return
                    yield None
                    continue
                if last and entry_order(item.id) <= entry_order(last):
                    continue
                yield item
                last = item.id
                if item.terminal:
                    return
        except redis.RedisError as exc:
            log.warning("stream %s ended: %s", channel, exc)
        finally:
            self.dispatcher().unsubscribe(sub)

    def _render(self, events: Iterator[LoggedEvent | None]) -> Iterator[str]:
        for event in events:
            if event is None:
                yield ": heartbeat\n\n"
            else:
                yield event.sse
                metrics.SSE_EVENTS_SENT.inc()


stream = TurnStreamBlueprint("stream", __name__)
stream.add_url_rule("/stream/<session_id>/<message_id>", endpoint="stream", view_func=stream.stream)
