"""One pooled client per Redis store, each behind its store's circuit breaker.

Every command and pipeline of a store's client goes through shared.breakers, so a dead
server fails fast (StoreUnavailable) instead of costing a connect timeout per call.
Pub/sub connections have no breaker: the dispatcher handles their loss itself.

A store's URL picks its topology (shared.redis_urls): one server, a Sentinel-watched master or
a Redis Cluster. The client is the same to its callers: a redis.Redis for the first two (a
Sentinel pool asks the sentinels for the master on every new connection, so after a failover
the next connection goes to the new master), a RedisCluster for the third (it follows MOVED
and failovers by re-reading the slot map).

Pools are BlockingConnectionPools, also under Sentinel and per Cluster node: under gevent or
threads, a burst waits for a free connection instead of raising MaxConnectionsError (redis-py's
default pool stops at 100). redis-py resets a pool after fork, so module-level caching is safe
for prefork workers."""

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import redis
from redis.client import Pipeline
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.sentinel import Sentinel, SentinelConnectionPool

from shared import redis_urls
from shared.breakers import breaker, reset_breakers
from shared.defaults import REPLICA_WAIT_MS
from shared.per_store import PerStore
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

T = TypeVar("T")


class BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's master discovery with the blocking pool's wait for a free connection."""


def _connection_options(settings: Settings) -> dict:
    return {"socket_timeout": settings.redis_socket_timeout_s,
            "socket_connect_timeout": settings.redis_connect_timeout_s,
            "decode_responses": True, "health_check_interval": 30}


def make_pool(url: str, settings: Settings, max_connections: int | None = None) -> redis.BlockingConnectionPool:
    """A blocking pool for a single-server or Sentinel URL (a Cluster has one pool per node: make_redis)."""
    target = redis_urls.parse(url)
    size = max_connections or settings.redis_pool_size
    if target.cluster:
        raise ValueError("a cluster:// URL has a pool per node: use make_redis()")
    if not target.sentinel:
        return redis.BlockingConnectionPool.from_url(url, max_connections=size, timeout=settings.redis_pool_timeout_s,
                                                     **_connection_options(settings))
    sentinel_timeouts = {"socket_timeout": settings.redis_socket_timeout_s,
                         "socket_connect_timeout": settings.redis_connect_timeout_s}
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_timeouts)
    return BlockingSentinelPool(target.master, sentinel, max_connections=size, timeout=settings.redis_pool_timeout_s,
                                db=target.db, password=target.password, **_connection_options(settings))


def _cluster_options(target: redis_urls.RedisTarget, settings: Settings, max_connections: int | None) -> dict:
    (host, port), *others = target.hosts
    return {"url": f"redis://{host}:{port}/0", "startup_nodes": [ClusterNode(h, p) for h, p in others] or None,
            "password": target.password, "connection_pool_class": redis.BlockingConnectionPool,
            "max_connections": max_connections or settings.redis_pool_size,
            "timeout": settings.redis_pool_timeout_s, **_connection_options(settings)}


def make_redis(url: str, settings: Settings, max_connections: int | None = None) -> redis.Redis | RedisCluster:
    """An unguarded client for `url` (the stream tier's own small pool, benchmarks, tools)."""
    target = redis_urls.parse(url)
    if target.cluster:
        return Cluster(**_cluster_options(target, settings, max_connections))
    return redis.Redis(connection_pool=make_pool(url, settings, max_connections))


class BreakerPipeline(Pipeline):
    def __init__(self, store: str, *args: object, **kwargs: object):
        super().__init__(*args, **kwargs)
        self.store = store

    def execute(self, raise_on_error: bool = True) -> list:
        return breaker(self.store).call(super().execute, raise_on_error)


class BreakerRedis(redis.Redis):
    """A store's client: each command passes through the store's breaker."""

    def __init__(self, store: str, **kwargs: object):
        self.store = store  # first: the constructor may already send commands (a Cluster reads its slot map)
        super().__init__(**kwargs)

    def execute_command(self, *args: object, **options: object):
        return breaker(self.store).call(super().execute_command, *args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: object = None) -> BreakerPipeline:
        return BreakerPipeline(self.store, self.connection_pool, self.response_callbacks, transaction, shard_hint)


class Cluster(RedisCluster):
    """A Cluster client whose slot-map errors during a failover (a slot briefly owned by no
    node) surface as ConnectionError, so callers' `except redis.RedisError` handles them like
    any other outage (redis-py raises them as RedisClusterException, outside RedisError)."""

    def execute_command(self, *args: object, **options: object):
        return _cluster_call(super().execute_command, *args, **options)


class BreakerRedisCluster(Cluster):
    """A store's Cluster client: each command passes through the store's breaker."""

    def __init__(self, store: str, **kwargs: object):
        self.store = store  # first: the constructor may already send commands (a Cluster reads its slot map)
        super().__init__(**kwargs)

    def execute_command(self, *args: object, **options: object):
        return breaker(self.store).call(super().execute_command, *args, **options)

    def pipeline(self, transaction: bool | None = None, shard_hint: object = None):
        """A Cluster pipeline whose execute() goes through the breaker, like every other call."""
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute
        pipe.execute = lambda raise_on_error=True: breaker(self.store).call(_cluster_call, execute, raise_on_error)
        return pipe


def _cluster_call(func, *args: object, **options: object):
    try:
        return func(*args, **options)
    except RedisClusterException as exc:
        raise redis.ConnectionError(f"cluster topology changing: {exc}") from exc


def mget(r: redis.Redis | RedisCluster, names: list[str]) -> list[str | None]:
    """The values of `names`, in order: one MGET on a server; on a Cluster one MGET per slot, sent
    together in one pipeline (keys.py tags what is read together, so that is a slot or two)."""
    return r.mget_nonatomic(names) if isinstance(r, RedisCluster) else r.mget(names)


def _new_client(store: str) -> redis.Redis | RedisCluster:
    settings = get_settings()
    target = settings.store_target(store)
    if target.cluster:
        return BreakerRedisCluster(store, **_cluster_options(target, settings, None))
    return BreakerRedis(store, connection_pool=make_pool(target.url, settings))


_clients = PerStore(_new_client)


def client(store: str) -> redis.Redis:
    """The shared client for `store` ('broker', 'progress', 'exec_cache' or 'auth_memo')."""
    return _clients.get(store)


class PerClient(Generic[T]):
    """A process-wide object built from the settings and `store`'s client, rebuilt when either
    changes (tests and the dev runner reload them): the guards' AuthMemo and ExecCache."""

    def __init__(self, store: str, build: Callable[[], T]):
        self._store = store
        self._build = build
        self._held: tuple[tuple[int, int], T] | None = None

    def get(self) -> T:
        identity = (id(get_settings()), id(client(self._store)))
        if self._held is None or self._held[0] != identity:
            self._held = (identity, self._build())
        return self._held[1]


MIN_BROKER_VERSION = (7, 0)  # master_only's shebang


class StoreTooOld(RuntimeError):
    """The broker runs a Redis older than the scripts need."""


def version_ok(version: str) -> bool:
    """Pure rule: can a broker on Redis `version` (INFO's redis_version) run our scripts?"""
    return tuple(int(part) for part in version.split(".")[:2]) >= MIN_BROKER_VERSION


def check_broker_version() -> None:
    """Refuse to start on a broker older than Redis 7 (StoreTooOld), where every write script
    would fail to compile (a syntax error at its shebang) on the first turn instead."""
    try:
        version = client("broker").info("server").get("redis_version", "0")
    except redis.ResponseError:  # INFO disabled (some managed Redis): we cannot tell
        log.warning("broker: cannot read its Redis version; turnstream needs Redis 7 or newer")
        return
    if not version_ok(str(version)):
        raise StoreTooOld(f"broker: Redis {version}; turnstream needs Redis "
                          f"{'.'.join(map(str, MIN_BROKER_VERSION))} or newer (its scripts declare their writes)")


def master_only(script: str) -> str:
    """A Lua script that writes, declared so: with a Redis 7 shebang and no `no-writes` flag, a
    replica refuses it (READONLY, which redis-py's Sentinel connection turns into a reconnect)
    before it runs. Undeclared, a replica runs it until its first write, so a script that reads
    first answers from stale data: after a failover, a worker reconnected to the demoted master
    (a sentinel that has not heard of the failover yet still names it), now a replica resyncing,
    would see a new turn as gone and drop its step. (Before the demotion the old master is still
    a master, and a read there can be stale all the same: see `on_the_master`.)"""
    return "#!lua\n" + script.lstrip("\n")


@contextmanager
def replicated(store: str, r: redis.Redis | None = None,
               undo: Callable[[redis.Redis], object] | None = None) -> Iterator[redis.Redis]:
    """A client on one connection of `store`'s pool. Under Sentinel, leaving the block waits
    (up to REPLICA_WAIT_MS) until a replica has every write made so far, so what the block
    wrote survives a failover that follows: WAIT counts the writes of its own connection,
    hence the single connection. Elsewhere it is the store's client, and leaving costs nothing.

    When no replica acknowledged and the sentinels say this server is being replaced, leaving
    raises ConnectionError (the caller refuses what it was doing); `undo(client)` first takes back
    the block's writes on the same connection, so a refused write does not stay behind on a server
    that turns out to remain the master (where the redelivery sweeper would act on it)."""
    r = r or client(store)
    if not get_settings().store_target(store).sentinel:
        yield r
        return
    with _one_connection(store, r) as one:
        yield one
        if one.wait(1, REPLICA_WAIT_MS):
            return
        _still_the_master(store, one, undo)
        log.warning("%s: no replica acknowledged a write within %d ms; a failover now could lose it",
                    store, REPLICA_WAIT_MS)


@contextmanager
def on_the_master(store: str, r: redis.Redis | None = None) -> Iterator[redis.Redis]:
    """A client on one connection of `store`'s pool whose server the sentinels still name as the
    master; ConnectionError if they name another (the caller waits that out as an outage).
    Elsewhere it is the store's client. For an answer a server being replaced could give wrongly:
    for seconds after a failover's promotion the old master still serves the connections it has,
    without the writes made on the new one since, so "no such turn" there is no answer at all."""
    r = r or client(store)
    if not get_settings().store_target(store).sentinel:
        yield r
        return
    with _one_connection(store, r) as one:
        _still_the_master(store, one, wrote=False)
        yield one


def _one_connection(store: str, r: redis.Redis) -> redis.Redis:
    """A breaker-wrapped client on one connection of `r`'s pool (a context manager that returns it)."""
    return breaker(store).call(BreakerRedis, store, connection_pool=r.connection_pool, single_connection_client=True)


def _still_the_master(store: str, one: redis.Redis, undo: Callable[[redis.Redis], object] | None = None,
                      wrote: bool = True) -> None:
    """Before a read (on_the_master), or after a WAIT no replica acknowledged (replicated): raise
    ConnectionError if the sentinels say this connection's server is being replaced as master,
    after `undo` took back the writes made there. A
    failover of a live master (SENTINEL FAILOVER, a partition healing) promotes the replica first
    and demotes the old master only when Sentinel next looks at it, seconds later; meanwhile the
    old one accepts writes on the connections it has, and its demotion discards them. Its replica
    is gone, so WAIT is where that shows. Every sentinel is asked (see `replaced_by`). A replica
    that is merely down starts no failover, so then the write is kept.
    Rejected: `min-replicas-to-write 1` on the master, which closes the same window but refuses
    every write while the one replica is down."""
    connection, pool = one.connection, one.connection_pool
    here = (connection.host, int(connection.port))
    replaced = replaced_by(_sentinel_views(pool), here)
    if not replaced:
        return
    if undo is not None:
        try:
            undo(one)  # before the disconnect: on this server, where the write was made
        except redis.RedisError as exc:  # a demoted server discards the write anyway
            log.warning("%s: could not take back a refused write on %s:%d: %r", store, *here, exc)
    pool.get_master_address()  # redis-py drops the idle connections once the address changed
    connection.disconnect()
    raise redis.ConnectionError(f"{store}: {here[0]}:{here[1]} is being replaced as master ({replaced})"
                                + ("; its write is not kept" if wrote else ""))


def _sentinel_views(pool: SentinelConnectionPool) -> list[dict]:
    """SENTINEL MASTER as every sentinel that answers sees it (one that does not knows nothing)."""
    views = []
    for sentinel in pool.sentinel_manager.sentinels:
        try:
            views.append(sentinel.sentinel_master(pool.service_name))
        except redis.RedisError:
            continue
    return views


def replaced_by(views: list[dict], here: tuple[str, int]) -> str | None:
    """What the sentinels' views (SENTINEL MASTER replies) say makes `here` no longer the master,
    or None. A failover in progress (flagged only by the sentinel leading it) refuses; otherwise
    the view of the newest configuration (highest config-epoch: the leader's, once it switched)
    decides. Sentinels that did not lead a failover name the old address for up to seconds after
    it, with the older epoch, so they must not refuse a write on the new master.
    Rejected: refusing as soon as any sentinel names another address (refused writes kept on the
    real master after every failover), and a majority vote (right after a failover the laggards
    are the majority, and during one only the leader knows)."""
    for view in views:
        if "failover_in_progress" in _flags(view):
            return "a failover is under way"
    if not views:
        return None
    newest = max(views, key=lambda view: int(view.get("config-epoch", 0)))
    if (newest["ip"], int(newest["port"])) != here:
        return f"the sentinels' newest configuration (epoch {newest.get('config-epoch', 0)}) names " \
               f"{newest['ip']}:{newest['port']}"
    return None


def _flags(view: dict) -> set[str]:
    return view["flags"] if isinstance(view["flags"], set) else set(view["flags"].split(","))


def reset_clients() -> None:
    """Forget every client (after settings change, e.g. in tests or the dev runner)."""
    for c in _clients.clear():
        c.close() if isinstance(c, RedisCluster) else c.connection_pool.disconnect()
    reset_breakers()
