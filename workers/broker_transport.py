"""kombu's Redis transport, with two fixes so a worker survives its broker dying mid-step or
being demoted to a replica.

With kombu 5.7 and Celery 5.7, when the broker connection drops while late-ack messages
are unacknowledged, the worker closes the channel and tries to hand those messages back
(restore_unacked), and finishing steps later ack them over that closed channel. Both go
through a channel whose connection is already gone and raise AttributeError, which Celery
takes as unrecoverable: the worker process exits and takes every running step with it.

Here both failures are logged instead. The messages stay in the broker's unacked set, and
its visibility-timeout sweep puts them back on the queue: the at-least-once path that a
crashed worker takes anyway. Steps are idempotent, so a step that did finish but could not
ack runs again harmlessly.

A broker demoted while a worker waits on it (`REPLICAOF` on the master) answers the waiting BRPOP
with `-UNBLOCKED ... (master -> replica?)`. redis-py raises that as a plain ResponseError, which
kombu counts as a channel error and Celery as unrecoverable: the worker exits. The connections
here raise it as what it is, a lost master (ConnectionError, the connection dropped), so the
worker reconnects, under Sentinel to whichever server the sentinels name, as after a crash.
(`SENTINEL FAILOVER` also kills the old master's clients, so a worker sees a closed connection
there; redis-py's Sentinel connection already turns a write's READONLY into a ConnectionError.)"""

import logging

import redis
from kombu.transport import redis as kombu_redis
from redis.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

from shared import broker_channel

log = logging.getLogger(__name__)
LOST_CONNECTION = (AttributeError, redis.RedisError, OSError)
DEMOTED = "UNBLOCKED"  # Redis's error to a client blocked on a server that turns replica


class FollowsDemotion:
    """A connection on which a demotion of its server is a lost connection, not a channel error:
    the UNBLOCKED of a BRPOP it was waiting in, and the READONLY a replica answers after that
    (which redis-py's Sentinel connection already turns into a ConnectionError; a single server's
    does not), so a worker waits for a master as it waits for a broker that is down."""

    def read_response(self, *args, **kwargs):
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            if not (str(exc).startswith(DEMOTED) or isinstance(exc, redis.exceptions.ReadOnlyError)):
                raise
            self.disconnect()
            raise redis.ConnectionError(f"the broker is not a master: {exc}") from exc


class Connection(FollowsDemotion, redis.Connection):
    pass


class SentinelConnection(FollowsDemotion, SentinelManagedConnection):
    pass


# kombu connects with `connection_class_ssl` instead when the broker URL is rediss:// (or
# broker_use_ssl is set): the same demotion-following for a broker reached over TLS.
class SSLConnection(FollowsDemotion, redis.SSLConnection):
    pass


class SentinelSSLConnection(FollowsDemotion, SentinelManagedSSLConnection):
    pass


class QoS(kombu_redis.QoS):
    def restore_unacked(self, client=None):
        try:
            return super().restore_unacked(client)
        except LOST_CONNECTION as exc:
            log.warning("could not hand back %d unacked message(s) (%r); the broker restores them "
                        "after the visibility timeout", len(self._delivered), exc)
            self._delivered.clear()
            return None

    def ack(self, delivery_tag):
        try:
            super().ack(delivery_tag)
        except LOST_CONNECTION as exc:
            self._forget(delivery_tag, "ack", exc)

    def reject(self, delivery_tag, requeue=False):
        try:
            super().reject(delivery_tag, requeue)
        except LOST_CONNECTION as exc:
            self._forget(delivery_tag, "reject", exc)

    def _forget(self, delivery_tag: str, what: str, exc: Exception) -> None:
        """Drop the message from this channel's bookkeeping only; the broker still holds it as unacked."""
        log.warning("%s of %s lost with its connection (%r); the message comes back after the "
                    "visibility timeout and its step runs again (idempotently)", what, delivery_tag, exc)
        super(kombu_redis.QoS, self).ack(delivery_tag)


class Channel(broker_channel.Channel):  # one redis-py client per channel (shared.broker_channel)
    QoS = QoS
    connection_class = Connection
    connection_class_ssl = SSLConnection


class Transport(broker_channel.Transport):
    Channel = Channel


class SentinelChannel(broker_channel.SentinelChannel):
    QoS = QoS
    connection_class = SentinelConnection
    connection_class_ssl = SentinelSSLConnection


class SentinelTransport(broker_channel.SentinelTransport):
    """The same fix for a broker behind Sentinel: its failover drops every connection at once."""

    Channel = SentinelChannel
