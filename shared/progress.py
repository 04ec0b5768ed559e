"""Progress events: publish (workers) and the per-turn event log (web replay and polling).

Each event is appended to a capped stream and published on the turn's channel in one
Lua script, so the live copy and the logged copy carry the same id: the stream entry id,
which is also the SSE `id:`. The pub/sub payload is flask-sse's Message.to_dict() as JSON,
so any flask-sse consumer can read it."""

import json
import logging
import re
import time
from dataclasses import dataclass
from functools import cached_property

import redis
from flask_sse import Message
from redis.cluster import RedisCluster

from shared import keys
from shared.events import DeltaEvent, ProgressEvent, event_type
from shared.redis_stores import client
from shared.settings import get_settings
from shared.tracing import current_trace_id
from shared.vocabulary import TERMINAL_EVENTS, delta_dedupe

log = logging.getLogger(__name__)

# KEYS: log, marker. ARGV: message json, type, data, maxlen, ttl ms, channel, dedupe flag, publish
# command: PUBLISH on one server, SPUBLISH on a Cluster (the channel shares the log's slot, so
# the event goes out from the shard that holds the log and reaches no other shard).
_APPEND_AND_PUBLISH = """
if ARGV[7] == '1' then
  local prior = redis.call('GET', KEYS[2])
  if prior then return prior end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], '*', 'type', ARGV[2], 'data', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if ARGV[7] == '1' then redis.call('SET', KEYS[2], id, 'PX', ARGV[5]) end
local message = cjson.decode(ARGV[1])
message['id'] = id
redis.call(ARGV[8], ARGV[6], cjson.encode(message))
return id
"""

# The same for several events of one turn in one round trip (Publisher.publish_all). KEYS: log,
# then each event's marker. ARGV: maxlen, ttl ms, channel, publish command, then per event its
# message json, type, data and dedupe flag. Returns the events' ids.
_APPEND_AND_PUBLISH_ALL = """
local ids = {}
for i = 2, #KEYS do
  local at = 4 * (i - 2) + 4
  local id = false
  if ARGV[at + 4] == '1' then id = redis.call('GET', KEYS[i]) end
  if not id then
    id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'type', ARGV[at + 2], 'data', ARGV[at + 3])
    if ARGV[at + 4] == '1' then redis.call('SET', KEYS[i], id, 'PX', ARGV[2]) end
    local message = cjson.decode(ARGV[at + 1])
    message['id'] = id
    redis.call(ARGV[4], ARGV[3], cjson.encode(message))
  end
  ids[#ids + 1] = id
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return ids
"""


@dataclass(frozen=True)
class LoggedEvent:
    """One event as stored in the log: its entry id in the log (a Redis stream id), SSE type and JSON data text."""

    id: str
    type: str
    data: str

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS

    def message(self) -> Message:
        return Message(self.data, type=self.type, id=self.id)

    @cached_property
    def sse(self) -> str:
        """The SSE text, rendered once however many clients receive the event."""
        return str(self.message())

    def as_json(self) -> dict:
        return {"id": self.id, "type": self.type, "data": json.loads(self.data)}


def entry_order(value: str) -> tuple[int, int]:
    """Log entry ids (Redis stream ids) compare as (milliseconds, sequence)."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


# What Redis itself accepts as a full entry id: ASCII digits, both parts within 64 bits. Python's
# int() alone would let through "1-", "1_000-0", other scripts' digits and 2**64, which Redis refuses.
ENTRY_ID_PATTERN = re.compile(r"[0-9]{1,20}-[0-9]{1,20}", re.ASCII)
ENTRY_ID_PART_MAX = 2**64 - 1


def valid_entry_id(value: str | None) -> str | None:
    """`value` if it is a log entry id Redis accepts, else None."""
    if not value or not ENTRY_ID_PATTERN.fullmatch(value):
        return None
    if any(int(part) > ENTRY_ID_PART_MAX for part in value.split("-")):
        return None
    return value


def sharded(r: redis.Redis | RedisCluster) -> bool:
    """True on a Redis Cluster, where progress goes through sharded pub/sub."""
    return isinstance(r, RedisCluster)


def publish_command(r: redis.Redis | RedisCluster) -> str:
    return "SPUBLISH" if sharded(r) else "PUBLISH"


@dataclass(frozen=True)
class Rendered:
    """An event as the publish script takes it: its SSE type, its JSON data and the pub/sub wire form."""

    kind: str
    data: str
    wire: str


def render(event: ProgressEvent) -> Rendered:
    trace_id = current_trace_id()
    if trace_id and event.trace_id is None:
        event = event.model_copy(update={"trace_id": trace_id})
    kind = event_type(event)
    data = event.model_dump_json(exclude_none=True)
    return Rendered(kind, data, json.dumps(Message(data, type=kind).to_dict()))


def append_and_publish(session_id: str, message_id: str, rendered: Rendered, dedupe: str | None,
                       r: redis.Redis | None = None) -> str:
    """Log and publish one rendered event (once per dedupe name); returns its log id."""
    settings = get_settings()
    r = r or client("progress")
    marker = keys.progress_marker(session_id, message_id, dedupe or "none")
    return r.register_script(_APPEND_AND_PUBLISH)(
        keys=[keys.progress_log(session_id, message_id), marker],
        args=[rendered.wire, rendered.kind, rendered.data, settings.progress_log_maxlen, settings.progress_ttl_s * 1000,
              keys.progress_channel(session_id, message_id), "1" if dedupe else "0", publish_command(r)])


def append_and_publish_all(session_id: str, message_id: str, events: list[tuple[Rendered, str | None]],
                           r: redis.Redis | None = None) -> list[str]:
    """Log and publish several rendered events of one turn, in order, in one round trip."""
    settings = get_settings()
    r = r or client("progress")
    return r.register_script(_APPEND_AND_PUBLISH_ALL)(
        keys=[keys.progress_log(session_id, message_id),
              *(keys.progress_marker(session_id, message_id, dedupe or "none") for _, dedupe in events)],
        args=[settings.progress_log_maxlen, settings.progress_ttl_s * 1000,
              keys.progress_channel(session_id, message_id), publish_command(r), *(item for rendered, dedupe in events
                                    for item in (rendered.wire, rendered.kind, rendered.data, "1" if dedupe else "0"))])


class Publisher:
    """Publishes one turn's events. `dedupe` names make a redelivered step publish nothing new.

    A `fail_soft` publisher (the workers') never raises for the progress Redis: progress is a
    view of the turn, and an outage of its Redis must not fail the turn. An event it cannot
    deliver goes to the outbox (shared.outbox), and so does every later event of the turn while
    the outbox holds any of it, so they are published in order once the progress Redis is back."""

    def __init__(self, session_id: str, message_id: str, r: redis.Redis | None = None, fail_soft: bool = False):
        self.session_id = session_id
        self.fail_soft = fail_soft
        self.dropped = 0
        self.message_id = message_id
        self.channel = keys.progress_channel(session_id, message_id)
        self.log_key = keys.progress_log(session_id, message_id)
        self._redis = r or client("progress")

    def publish(self, event: ProgressEvent, dedupe: str | None = None) -> str | None:
        rendered = render(event)
        if not self.fail_soft:
            return append_and_publish(self.session_id, self.message_id, rendered, dedupe, self._redis)
        from shared import outbox

        if outbox.must_queue(self.session_id, self.message_id):
            outbox.keep(self.session_id, self.message_id, rendered, dedupe)
            return None
        try:
            return append_and_publish(self.session_id, self.message_id, rendered, dedupe, self._redis)
        except redis.RedisError as exc:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("progress of %s/%s not published (%s); kept in the outbox",
                            self.session_id, self.message_id, exc)
            outbox.keep(self.session_id, self.message_id, rendered, dedupe)
            return None


    def publish_all(self, events: list[tuple[ProgressEvent, str | None]]) -> None:
        """`publish` for several events (event, dedupe name), in order, in one round trip (one
        script: the store takes all of them or none). The fail-soft publisher keeps all of them
        in the outbox when the store does not answer."""
        if len(events) <= 1:
            for event, dedupe in events:
                self.publish(event, dedupe)
            return
        rendered = [(render(event), dedupe) for event, dedupe in events]
        if not self.fail_soft:
            append_and_publish_all(self.session_id, self.message_id, rendered, self._redis)
            return
        from shared import outbox

        if not outbox.must_queue(self.session_id, self.message_id):
            try:
                append_and_publish_all(self.session_id, self.message_id, rendered, self._redis)
                return
            except redis.RedisError as exc:
                self.dropped += 1
                if self.dropped == 1:
                    log.warning("progress of %s/%s not published (%s); kept in the outbox",
                                self.session_id, self.message_id, exc)
        for event, dedupe in rendered:
            outbox.keep(self.session_id, self.message_id, event, dedupe)


class DeltaCoalescer:
    """Buffers streamed answer deltas and publishes them about every `interval` seconds."""

    def __init__(self, publisher: Publisher, interval: float | None = None):
        self._publisher = publisher
        self._interval = get_settings().token_coalesce_s if interval is None else interval
        self._buffer: list[str] = []
        self._last_flush = time.monotonic()
        self._chunks = 0
        self.published = 0

    def add(self, delta: str) -> None:
        self._buffer.append(delta)
        if time.monotonic() - self._last_flush >= self._interval:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        text, self._buffer = "".join(self._buffer), []
        self._publisher.publish(DeltaEvent(text=text), dedupe=delta_dedupe(self._chunks))
        self._chunks += 1
        self.published += 1


def read_log(session_id: str, message_id: str, after: str | None = None,
             r: redis.Redis | None = None) -> list[LoggedEvent]:
    """Every logged event of a turn after `after` (exclusive), oldest first."""
    start = f"({after}" if after else "-"
    entries = (r or client("progress")).xrange(keys.progress_log(session_id, message_id), min=start)
    return [LoggedEvent(id=entry_id, type=fields["type"], data=fields["data"]) for entry_id, fields in entries]


def last_entry_id(session_id: str, message_id: str, r: redis.Redis | None = None) -> str | None:
    """The id of the turn's newest logged event; None for an empty log."""
    newest = (r or client("progress")).xrevrange(keys.progress_log(session_id, message_id), count=1)
    return newest[0][0] if newest else None


def parse_wire(payload: str) -> LoggedEvent:
    """A pub/sub payload (flask-sse's Message dict) back into a LoggedEvent."""
    message = Message(**json.loads(payload))
    return LoggedEvent(id=message.id, type=message.type, data=message.data)
