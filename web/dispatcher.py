"""Fan-out: one pub/sub connection per progress shard per web process, shared by all its SSE clients.

On one server there is one shard and one connection (SUBSCRIBE). On a Redis Cluster, channels
are shard channels (SSUBSCRIBE) and each lives on the master that owns its slot, so there is
one connection per master that holds a subscribed channel, never one per client.

A reader greenlet per connection takes every message off it and hands it to the bounded
queue of each subscriber of that channel. Channels are reference-counted: the first
subscriber subscribes, the last one to leave unsubscribes. The dispatcher never waits
on a client: one whose queue is full is cut off (it reconnects and replays the log).
A subscriber that may have missed messages is closed the same way: when its shard's connection
drops (a dead server, a Cluster failover), when redis-py silently re-subscribed, or when the
Cluster moved its channel's slot to another master (the server then ends the subscription
itself). Each such client is closed once, reconnects, and resumes from the log; the slot map
is read again first, so it subscribes where its channel lives now. A connection that died while
it held no channel (nothing reads it then) is replaced before it takes a new one.

Rejected: redis-py's ClusterPubSub.get_sharded_message, which polls the per-node connections
in turn with a timeout each, so one quiet shard delays the others; here each shard has its
own reader."""

import logging
import time
from collections import defaultdict

import gevent
import redis
from gevent.event import Event
from gevent.lock import RLock
from gevent.queue import Empty, Full, Queue
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from shared.progress import LoggedEvent, parse_wire, sharded

log = logging.getLogger(__name__)

CLOSE = object()
SINGLE = "single"
# Hundreds of clients resuming at once after a failover ask for one slot-map read, not one each.
SLOT_REFRESH_GAP_S = 0.5
# What a shard's own pub/sub connection takes over from the Cluster client's settings.
NODE_OPTIONS = ("username", "password", "socket_timeout", "socket_connect_timeout", "decode_responses",
                "health_check_interval")


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

    def wake(self, signal: object) -> None:
        """Hand the stream a signal from outside its channel (web.turn_watch: its turn ended); a
        client whose queue is full is cut off as for an event, and resumes from the log."""
        self.deliver(signal)

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

    def ready(self) -> list[LoggedEvent | object]:
        """What is queued already, without waiting (the stream writes it in one go)."""
        items = []
        while not self.closed_reason:
            try:
                items.append(self.queue.get_nowait())
            except Empty:
                break
        return [CLOSE] if self.closed_reason else items


class Shard:
    """One pub/sub connection: to the single server, or to one Cluster master (shard channels)."""

    def __init__(self, name: str, pubsub: PubSub, sharded_channels: bool):
        self.name = name
        self.pubsub = pubsub
        self.sharded = sharded_channels
        self.channels: set[str] = set()
        self.reader: gevent.Greenlet | None = None

    def subscribe(self, channel: str) -> None:
        (self.pubsub.ssubscribe if self.sharded else self.pubsub.subscribe)(channel)
        self.channels.add(channel)

    def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        (self.pubsub.sunsubscribe if self.sharded else self.pubsub.unsubscribe)(channel)

    def idle_and_dead(self) -> bool:
        """Holding no subscription, was this connection closed under us? With no channel nothing
        reads it (redis-py waits for a subscription first), so a server that restarted while no
        stream was open goes unnoticed until a new subscription is sent into the dead socket and
        its streams are cut. Checked before a first channel is subscribed: a read that does not
        wait (one syscall); a connection that is busy with a subscription is not touched."""
        connection = self.pubsub.connection
        if connection is None or self.channels or self.pubsub.subscribed:
            return False
        try:
            connection.can_read(timeout=0)
        except (redis.ConnectionError, OSError):
            return True
        return False

    def close(self) -> None:
        try:
            self.pubsub.reset()
        except (redis.RedisError, OSError):
            pass


class Dispatcher:
    def __init__(self, r: redis.Redis | RedisCluster, queue_size: int, subscribe_timeout: float):
        self._redis = r
        self._sharded = sharded(r)
        self._queue_size = queue_size
        self._subscribe_timeout = subscribe_timeout
        self._shards: dict[str, Shard] = {}
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        self._channel_shard: dict[str, Shard] = {}
        self._pending: dict[str, int] = defaultdict(int)
        self._confirmed: dict[str, Event] = {}
        self._lock = RLock()
        self._slots_read_at = 0.0
        self.clients_cut = 0

    @property
    def client_count(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values())

    @property
    def channel_count(self) -> int:
        return len(self._subscribers)

    @property
    def connection_count(self) -> int:
        """Pub/sub connections this process holds (one per shard in use)."""
        return len(self._shards)

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
                    shard = self._shard_for(channel)
                    shard.subscribe(channel)
                    self._channel_shard[channel] = shard
                except (redis.RedisError, RedisClusterException) as exc:
                    self._forget(sub)
                    self._refresh_slots()  # a failover may have moved the channel's slot
                    raise redis.ConnectionError(f"cannot subscribe to {channel}: {exc}") from exc
                self._ensure_reader(shard)
            confirmed = self._confirmed[channel]
        if not confirmed.wait(self._subscribe_timeout):
            self.unsubscribe(sub)
            raise SubscribeTimeout(f"no confirmation for {channel}")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            shard = self._channel_shard.get(sub.channel)
            if self._forget(sub) and shard is not None:
                try:
                    shard.unsubscribe(sub.channel)
                except redis.RedisError:
                    pass  # the connection is gone, and the subscription with it.

    def _shard_for(self, channel: str) -> Shard:
        """The connection for `channel`: the single one, or that of the master owning its slot."""
        if not self._sharded:
            shard = self._shards.get(SINGLE)
            if shard is not None and shard.idle_and_dead():
                self._drop_idle(shard)
                shard = None
            if shard is None:
                shard = self._shards[SINGLE] = Shard(SINGLE, self._redis.pubsub(), sharded_channels=False)
            return shard
        node = self._redis.get_node_from_key(channel)
        shard = self._shards.get(node.name)
        if shard is not None and shard.idle_and_dead():
            self._drop_idle(shard)
            self._refresh_slots()  # it died in a failover, most likely: the slot may live elsewhere now
            node = self._redis.get_node_from_key(channel)
            shard = self._shards.get(node.name)
        if shard is None:
            shard = self._shards[node.name] = Shard(node.name, self._node_pubsub(node), sharded_channels=True)
        return shard

    def _node_pubsub(self, node: ClusterNode) -> PubSub:
        """A pub/sub connection of our own to one master, outside the Cluster client's pools: a slot-map
        refresh marks every pooled connection for reconnection, and redis-py would then re-subscribe
        all of a node's channels in one SSUBSCRIBE, which the server refuses across slots. With no
        retries, a dropped connection is an error the reader sees, and its clients resume instead."""
        options = {k: v for k, v in self._redis.nodes_manager.connection_kwargs.items() if k in NODE_OPTIONS}
        return redis.Redis(host=node.host, port=node.port, retry=Retry(NoBackoff(), 0), **options).pubsub()

    def _drop_idle(self, shard: Shard) -> None:
        """Let go of a shard whose idle connection died (Shard.idle_and_dead); its reader stops."""
        log.info("progress pub/sub connection %s was closed while idle; opening a new one", shard.name)
        del self._shards[shard.name]
        shard.close()

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
        self._channel_shard.pop(sub.channel, None)
        return True

    def _ensure_reader(self, shard: Shard) -> None:
        if shard.reader is None or shard.reader.dead:
            shard.reader = gevent.spawn(self._read_forever, shard)

    def _read_forever(self, shard: Shard) -> None:
        while self._shards.get(shard.name) is shard:
            try:
                message = shard.pubsub.get_message(timeout=1.0)
            except (redis.RedisError, OSError) as exc:
                # A dead server, or a reconnection that redis-py could not re-subscribe (CROSSSLOT,
                # MOVED): either way this connection may have missed messages.
                log.warning("progress pub/sub connection %s lost (%s); closing its %d streams",
                            shard.name, exc, self._clients_of(shard))
                self._start_over(shard, "connection lost")
                return
            except RuntimeError:
                gevent.sleep(0.1)  # no subscription yet on this connection (redis-py refuses to read)
                continue
            if message is not None:
                self._handle(shard, message)

    def _clients_of(self, shard: Shard) -> int:
        return sum(len(self._subscribers.get(channel, ())) for channel in shard.channels)

    def _handle(self, shard: Shard, message: dict) -> None:
        kind, channel = message["type"], message["channel"]
        if kind in ("message", "smessage"):
            self._fan_out(channel, parse_wire(message["data"]))
        elif kind in ("subscribe", "ssubscribe"):
            self._on_confirmed(channel)
        elif kind == "sunsubscribe" and channel in self._subscribers and channel in shard.channels:
            # Not ours: the Cluster moved the channel's slot to another master.
            log.info("progress channel %s moved off %s; its streams resume elsewhere", channel, shard.name)
            self._close_channel(channel, "moved")
            self._refresh_slots()

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

    def _close_channel(self, channel: str, reason: str) -> None:
        with self._lock:
            for sub in self._subscribers.pop(channel, ()):
                sub.close(reason)
            self._confirmed.pop(channel, None)
            self._pending.pop(channel, None)
            shard = self._channel_shard.pop(channel, None)
            if shard is not None:
                shard.channels.discard(channel)

    def _start_over(self, shard: Shard, reason: str) -> None:
        """Close every stream of `shard` (clients resume from the log) and drop its connection, so
        it is not silently re-subscribed to channels whose clients are gone. The next subscription
        to one of its channels opens a new connection, to whichever master owns the slot by then."""
        with self._lock:
            for channel in list(shard.channels):
                self._close_channel(channel, reason)
            if self._shards.get(shard.name) is shard:
                del self._shards[shard.name]
        shard.close()
        self._refresh_slots()

    def _refresh_slots(self) -> None:
        """Read the Cluster's slot map again (after a failover or a moved slot)."""
        if not self._sharded or time.monotonic() - self._slots_read_at < SLOT_REFRESH_GAP_S:
            return
        self._slots_read_at = time.monotonic()
        try:
            self._redis.nodes_manager.initialize()
        except (redis.RedisError, RedisClusterException, OSError) as exc:
            log.info("progress cluster slot map not refreshed yet: %s", exc)
