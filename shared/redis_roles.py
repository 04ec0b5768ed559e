"""One pooled client per Redis role, each behind its role's circuit breaker.

Every command and pipeline of a role's client goes through shared.breakers, so a dead
server fails fast (RoleUnavailable) instead of costing a connect timeout per call.
Pub/sub connections have no breaker: the dispatcher handles their loss itself.

Pools are BlockingConnectionPools: under gevent or threads, a burst waits for a free
connection instead of raising MaxConnectionsError (redis-py's default pool stops at 100).
redis-py resets a pool after fork, so module-level caching is safe for prefork workers."""

import logging
import threading

import redis
from redis.client import Pipeline

from shared.breakers import breaker, reset_breakers
from shared.defaults import ROLES
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def make_pool(url: str, settings: Settings, max_connections: int | None = None) -> redis.BlockingConnectionPool:
    return redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections or settings.redis_pool_size,
        timeout=settings.redis_pool_timeout_s,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        decode_responses=True,
        health_check_interval=30,
    )


class GuardedPipeline(Pipeline):
    def __init__(self, role: str, *args: object, **kwargs: object):
        super().__init__(*args, **kwargs)
        self.role = role

    def execute(self, raise_on_error: bool = True) -> list:
        return breaker(self.role).call(super().execute, raise_on_error)


class GuardedRedis(redis.Redis):
    """A role's client: each command passes through the role's breaker."""

    def __init__(self, role: str, **kwargs: object):
        super().__init__(**kwargs)
        self.role = role

    def execute_command(self, *args: object, **options: object):
        return breaker(self.role).call(super().execute_command, *args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: object = None) -> GuardedPipeline:
        return GuardedPipeline(self.role, self.connection_pool, self.response_callbacks, transaction, shard_hint)


def client(role: str) -> redis.Redis:
    """The shared client for `role` ('broker', 'progress', 'exec_cache' or 'auth_memo')."""
    if role not in ROLES:
        raise ValueError(f"unknown Redis role {role!r}")
    existing = _clients.get(role)
    if existing is not None:
        return existing
    with _lock:
        if role not in _clients:
            settings = get_settings()
            _clients[role] = GuardedRedis(role, connection_pool=make_pool(settings.role_url(role), settings))
        return _clients[role]


def reset_clients() -> None:
    """Forget every client (after settings change, e.g. in tests or the dev runner)."""
    with _lock:
        for c in _clients.values():
            c.connection_pool.disconnect()
        _clients.clear()
    reset_breakers()
