"""One pooled client per Redis role, each behind its role's circuit breaker.

Every command and pipeline of a role's client goes through shared.breakers, so a dead
server fails fast (RoleUnavailable) instead of costing a connect timeout per call.
Pub/sub connections have no breaker: the dispatcher handles their loss itself.

Pools are BlockingConnectionPools: under gevent or threads, a burst waits for a free
connection instead of raising MaxConnectionsError (redis-py's default pool stops at 100).
redis-py resets a pool after fork, so module-level caching is safe for prefork workers."""

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

import redis
from redis.client import Pipeline

from shared.breakers import breaker, reset_breakers
from shared.per_role import PerRole
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

T = TypeVar("T")


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


def _new_client(role: str) -> redis.Redis:
    settings = get_settings()
    return GuardedRedis(role, connection_pool=make_pool(settings.role_url(role), settings))


_clients = PerRole(_new_client)


def client(role: str) -> redis.Redis:
    """The shared client for `role` ('broker', 'progress', 'exec_cache' or 'auth_memo')."""
    return _clients.get(role)


class PerClient(Generic[T]):
    """A process-wide object built from the settings and `role`'s client, rebuilt when either
    changes (tests and the dev runner reload them): the guards' AuthMemo and ExecCache."""

    def __init__(self, role: str, build: Callable[[], T]):
        self._role = role
        self._build = build
        self._held: tuple[tuple[int, int], T] | None = None

    def get(self) -> T:
        identity = (id(get_settings()), id(client(self._role)))
        if self._held is None or self._held[0] != identity:
            self._held = (identity, self._build())
        return self._held[1]


def reset_clients() -> None:
    """Forget every client (after settings change, e.g. in tests or the dev runner)."""
    for c in _clients.clear():
        c.connection_pool.disconnect()
    reset_breakers()
