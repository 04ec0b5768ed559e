"""Fan-out: one pub/sub connection per web process, shared by all its SSE clients.

A reader greenlet takes every message off the connection and hands it to the bounded
queue of each subscriber of that channel. Channels are reference-counted: the first
subscriber subscribes, the last one to leave unsubscribes. The dispatcher never waits
on a client: one whose queue is full is cut off (it reconnects and replays the log).
A subscriber that may have missed messages (the connection dropped) is closed the same way."""

import logging
from collections import defaultdict

import gevent
import redis
from gevent.event import Event
from gevent.lock import RLock
from gevent.queue import Empty, Full, Queue

from shared.progress import LoggedEvent, parse_wire

log = logging.getLogger(__name__)

CLOSE = object()


class SubscribeTimeout(RuntimeError):
    """The server did not confirm a subscription in time."""


class Subscription:
    def __init__(self, channel: str, maxsize: int):
        self.channel = channel
        self.queue: Queue = Queue(maxsize)
        self.closed_reason: str | None = None

    def deliver(self, event: LoggedEvent) -> bool:
        """Queue `event`; False if the client is too slow and was cut off."""
        if self.closed_reason:
            return True
        try:
            self.queue.put_nowait(event)
            return True
        except Full:
            self.close("slow")
            return False

    def close(self, reason: str) -> None:
        self.closed_reason = self.closed_reason or reason
        try:
            self.queue.put_nowait(CLOSE)
        except Full:
            pass  # the reader finds closed_reason after draining.

    def get(self, timeout: float) -> LoggedEvent | object | None:
        """The next event, CLOSE, or None after `timeout` seconds with nothing."""
        if self.closed_reason:
            return CLOSE
        try:
            item = self.queue.get(timeout=timeout)
        except Empty:
            return None
        return CLOSE if self.closed_reason else item


class Dispatcher:
    def __init__(self, r: redis.Redis, queue_size: int, subscribe_timeout: float):
        self._redis = r
        self._queue_size = queue_size
        self._subscribe_timeout = subscribe_timeout
        self._pubsub = r.pubsub()
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        self._pending: dict[str, int] = defaultdict(int)
        self._confirmed: dict[str, Event] = {}
        self._lock = RLock()
        self._reader: gevent.Greenlet | None = None
        self.clients_cut = 0

    @property
    def client_count(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values())

    @property
    def channel_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self, channel: str) -> Subscription:
        """A new subscription, returned once the server has confirmed the channel."""
        sub = Subscription(channel, self._queue_size)
        with self._lock:
            first = not self._subscribers[channel]
            self._subscribers[channel].add(sub)
            if first:
                self._confirmed[channel] = Event()
                self._pending[channel] += 1
                try:
                    self._pubsub.subscribe(channel)
                except redis.RedisError:
                    self._forget(sub)
                    self._pending.pop(channel, None)
                    raise
            confirmed = self._confirmed[channel]
        self._ensure_reader()
        if not confirmed.wait(self._subscribe_timeout):
            self.unsubscribe(sub)
            raise SubscribeTimeout(f"no confirmation for {channel}")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if self._forget(sub):
                try:
                    self._pubsub.unsubscribe(sub.channel)
                except redis.RedisError:
                    pass  # the connection is gone, and the subscription with it.

    def _forget(self, sub: Subscription) -> bool:
        """Drop `sub`; True if it was the channel's last subscriber."""
        subs = self._subscribers.get(sub.channel)
        if subs is None:
            return False
        subs.discard(sub)
        if subs:
            return False
        del self._subscribers[sub.channel]
        self._confirmed.pop(sub.channel, None)
        self._pending.pop(sub.channel, None)
        return True

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.dead:
            self._reader = gevent.spawn(self._read_forever)

    def _read_forever(self) -> None:
        while True:
            try:
                message = self._pubsub.get_message(timeout=1.0)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("progress pub/sub connection lost (%s); closing %d streams", exc, self.client_count)
                self._start_over("connection lost")
                gevent.sleep(0.5)
                continue
            if message is not None:
                self._handle(message)

    def _handle(self, message: dict) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "message":
            self._fan_out(channel, parse_wire(message["data"]))
        elif kind == "subscribe":
            self._on_confirmed(channel)

    def _on_confirmed(self, channel: str) -> None:
        with self._lock:
            confirmed = self._confirmed.get(channel)
            if self._pending[channel] > 0:
                self._pending[channel] -= 1
                if self._pending[channel] == 0 and confirmed is not None:
                    confirmed.set()
                return
            # redis-py re-subscribed after a silent reconnect: messages may have been missed.
            for sub in list(self._subscribers.get(channel, ())):
                sub.close("resubscribed")

    def _fan_out(self, channel: str, event: LoggedEvent) -> None:
        for sub in list(self._subscribers.get(channel, ())):
            if not sub.deliver(event):
                self.clients_cut += 1

    def _start_over(self, reason: str) -> None:
        """Close every stream (clients resume from the log) and drop the old connection, so it is
        not silently re-subscribed to channels whose clients are gone."""
        with self._lock:
            for subs in self._subscribers.values():
                for sub in subs:
                    sub.close(reason)
            self._subscribers.clear()
            self._confirmed.clear()
            self._pending.clear()
            old, self._pubsub = self._pubsub, self._redis.pubsub()
        try:
            old.reset()
        except redis.RedisError:
            pass
