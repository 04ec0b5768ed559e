"""Circuit breakers for the two guard Redis roles (exec_cache, auth_memo).

When a guard's server fails, every call would otherwise pay redis-py's retries and connect
timeouts. After one failure the guard is skipped (tools run uncached, the verifier is asked
directly) for GUARD_BREAKER_RESET_S; then the next call tries again. Opening logs a warning and
each skipped call counts in `turnstream_guard_degraded_total`.

Not pybreaker: its CircuitBreaker.call holds one lock for the whole call, which would serialize
every thread of a worker behind a single blocking read (the exec cache's waiters block on XREAD)."""

import logging
import threading
import time
from typing import Callable, TypeVar

import redis
from prometheus_client import Counter

from shared.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

DEGRADED = Counter("turnstream_guard_degraded", "Calls that skipped a guard because its Redis failed", ["guard"])
_DEGRADED_MEANS = {"exec_cache": "tools run uncached", "auth_memo": "the verifier is asked directly"}


class GuardSkipped(RuntimeError):
    """The guard's Redis failed recently; it is not tried again until the breaker's reset time."""


GuardDown = (redis.RedisError, GuardSkipped)

_open_until: dict[str, float] = {}
_lock = threading.Lock()


def guarded(guard: str, call: Callable[[], T]) -> T:
    """`call()` unless the guard's breaker is open; raises one of GuardDown when the guard must be skipped."""
    until = _open_until.get(guard)
    if until is not None and time.monotonic() < until:
        DEGRADED.labels(guard).inc()
        raise GuardSkipped(f"{guard} Redis failed recently")
    try:
        result = call()
    except redis.RedisError as exc:
        _trip(guard, exc)
        DEGRADED.labels(guard).inc()
        raise
    if until is not None:
        with _lock:
            if _open_until.pop(guard, None) is not None:
                log.warning("%s Redis is back: guard restored", guard)
    return result


def _trip(guard: str, exc: Exception) -> None:
    reset_s = get_settings().guard_breaker_reset_s
    with _lock:
        first = guard not in _open_until
        _open_until[guard] = time.monotonic() + reset_s
    if first:
        log.warning("%s Redis failed (%s): %s for the next %.0fs", guard, exc, _DEGRADED_MEANS.get(guard, "skipped"),
                    reset_s)


def reset_breakers() -> None:
    """Forget breaker state (tests restart servers)."""
    with _lock:
        _open_until.clear()
