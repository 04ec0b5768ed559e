"""kombu's Redis transport with one redis-py client per channel, not one per operation, and a
channel pool that makes a caller wait for a connection instead of failing it.

kombu 5.7's Redis channel builds a new `redis.Redis` for every publish, acknowledgement and
delivery bookkeeping (`Channel.conn_or_acquire`); every one shares the channel's connection pool,
so the new object buys nothing but its construction: redis-py 8 fills two case-insensitive
tables of response callbacks per client, about 75 us on our 2-core machines, three or four
times per step (py-spy put `Channel._create_client` at 5-7 % of a worker's CPU on idle turns;
bench/README.md, capacity). Here a channel keeps the client it built while its pool is the
same, and builds a new one when kombu replaced the pool (a reconnect).

A channel's pool is kombu's `redis.ConnectionPool`, capped at 10 connections, and raises
MaxConnectionsError past them. A gevent worker acknowledges its messages from up to 50 greenlets
through its one consumer channel: the eleventh concurrent acknowledgement failed, Celery took
it for a lost broker, restarted its consumer and left the unacknowledged steps for the
visibility timeout (seen in a busy benchmark run: a turn stalled; stock kombu does the same,
tests/test_broker_channel.py). Here the channel's pool is a BlockingConnectionPool of
CHANNEL_CONNECTIONS: a caller past them waits (up to TURNSTREAM_REDIS_POOL_TIMEOUT_S) for one
to come back. Under Sentinel kombu builds the pool through redis-py's Sentinel, which takes no
pool class from it: there the cap alone is raised, above what a worker's greenlets hold at once.

Rules:
- A redis-py client over a connection pool is safe to share between threads and greenlets:
  every command checks a connection out of the pool and back. Pipelines stay per call.
- A caller that passes its own client (kombu does, inside a pipeline) still gets that one.
- The channel's blocking connection for BRPOP (kombu's asynchronous pool) is left as kombu makes it.

Both tiers use it (the web tier sends turns, workers send steps, acknowledge them and publish
task events): `transport_for` names the class a Celery app sets as `broker_transport`; the
workers' transport adds its broker-outage fixes on top (workers.broker_transport). The bench's
bare chain keeps kombu's own transport: it is the baseline stock Celery gives.

Rejected: a thread-local client per channel. It would not be wrong, but there is nothing per
thread to keep apart, and greenlets would each build one again."""

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from kombu.transport import redis as kombu_redis

from shared.settings import get_settings

# Connections a channel's pool opens at most: above the greenlets a worker runs (50 by default)
# and a web process's producers (BROKER_POOL_LIMIT, one channel each).
CHANNEL_CONNECTIONS = 64


class ClientPerChannel:
    """The mixin: `conn_or_acquire` hands out the channel's one client (see above)."""

    _reused: redis.Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        if client:
            yield client
            return
        reused, pool = self._reused, self.pool
        if reused is None or reused.connection_pool is not pool:
            reused = self._reused = self._create_client()
        yield reused


class Channel(ClientPerChannel, kombu_redis.Channel):
    max_connections = CHANNEL_CONNECTIONS

    def _get_pool(self, asynchronous: bool = False) -> redis.ConnectionPool:
        pool = super()._get_pool(asynchronous=asynchronous)  # kombu's parameters, kombu's pool
        if asynchronous:
            return pool
        return redis.BlockingConnectionPool(connection_class=pool.connection_class,
                                            max_connections=pool.max_connections,
                                            timeout=get_settings().redis_pool_timeout_s, **pool.connection_kwargs)


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(ClientPerChannel, kombu_redis.SentinelChannel):
    max_connections = CHANNEL_CONNECTIONS


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def transport_for(sentinel: bool, module: str = __name__) -> str:
    """The dotted `broker_transport` of the transport in `module` for a broker behind Sentinel or not."""
    return f"{module}:{'SentinelTransport' if sentinel else 'Transport'}"
