"""What a guard does when its Redis fails: the call is skipped (tools run uncached, the verifier
is asked directly), a warning says so, and `turnstream_guard_degraded_total` counts it.

Failing fast is not done here: every command of a store's client already passes through that
store's circuit breaker (shared.breakers), which after a few failures refuses calls at once
(StoreUnavailable, a redis.RedisError) until the server answers again."""

import logging
import threading
import time
from typing import Callable, TypeVar

import redis

from shared import breakers, metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

_DEGRADED_MEANS = {"exec_cache": "tools run uncached", "auth_memo": "the verifier is asked directly"}
_WARN_EVERY_S = 5.0

GuardDown = redis.RedisError

_last_warning: dict[str, float] = {}
_lock = threading.Lock()


def guard_redis_call(guard: str, call: Callable[[], T]) -> T:
    """`call()`; a Redis failure is counted, logged (at most every few seconds) and re-raised for
    the guard to skip itself."""
    try:
        return call()
    except redis.RedisError as exc:
        metrics.GUARD_DEGRADED.labels(guard).inc()
        _warn(guard, exc)
        raise


def _warn(guard: str, exc: Exception) -> None:
    now = time.monotonic()
    with _lock:
        if now - _last_warning.get(guard, -_WARN_EVERY_S) < _WARN_EVERY_S:
            return
        _last_warning[guard] = now
    log.warning("%s Redis failed (%s): %s", guard, exc, _DEGRADED_MEANS.get(guard, "skipped"))


def reset_breakers() -> None:
    """Forget breaker state (tests restart servers)."""
    with _lock:
        _last_warning.clear()
    breakers.reset_breakers()
