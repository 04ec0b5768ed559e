"""kombu's Redis transport with one redis-py client per channel, not one per operation.

kombu 5.7's Redis channel builds a new `redis.Redis` for every publish, acknowledgement and
delivery bookkeeping (`Channel.conn_or_acquire`); every one shares the channel's connection pool,
so the new object buys nothing but its construction: redis-py 8 fills two case-insensitive
tables of response callbacks per client, about 75 us on our 2-core machines, three or four
times per step (py-spy put `Channel._create_client` at 5-7 % of a worker's CPU on idle turns;
bench/README.md, capacity). Here a channel keeps the client it built while its pool is the
same, and builds a new one when kombu replaced the pool (a reconnect).

Rules:
- A redis-py client over a connection pool is safe to share between threads and greenlets:
  every command checks a connection out of the pool and back. Pipelines stay per call.
- A caller that passes its own client (kombu does, inside a pipeline) still gets that one.

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
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(ClientPerChannel, kombu_redis.SentinelChannel):
    pass


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def transport_for(sentinel: bool, module: str = __name__) -> str:
    """The dotted `broker_transport` of the transport in `module` for a broker behind Sentinel or not."""
    return f"{module}:{'SentinelTransport' if sentinel else 'Transport'}"
