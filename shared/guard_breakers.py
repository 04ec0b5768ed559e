"""Circuit breakers for the two guard Redis roles (exec_cache, auth_memo).

When a guard's server fails, every call would otherwise pay redis-py's retries and connect
timeouts. After one failure the breaker opens: the guard is skipped (tools run uncached, the
verifier is asked directly) until a trial call after GUARD_BREAKER_RESET_S succeeds. Opening
logs a warning and counts in `turnstream_guard_degraded_total`."""

import logging
import threading
from typing import Callable, TypeVar

import pybreaker
import redis
from prometheus_client import Counter

from shared.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

DEGRADED = Counter("turnstream_guard_degraded", "Calls that skipped a guard because its Redis failed", ["guard"])

GuardDown = (redis.RedisError, pybreaker.CircuitBreakerError)

_breakers: dict[str, pybreaker.CircuitBreaker] = {}
_lock = threading.Lock()


class _WarnOnChange(pybreaker.CircuitBreakerListener):
    def state_change(self, cb: pybreaker.CircuitBreaker, old_state, new_state) -> None:
        if new_state.name == pybreaker.STATE_OPEN:
            log.warning("%s Redis failed: guard degraded for %.0fs (%s)", cb.name, cb.reset_timeout, _DEGRADED_MEANS[cb.name])
        elif new_state.name == pybreaker.STATE_CLOSED:
            log.warning("%s Redis is back: guard restored", cb.name)


_DEGRADED_MEANS = {"exec_cache": "tools run uncached", "auth_memo": "the verifier is asked directly"}


def breaker(guard: str) -> pybreaker.CircuitBreaker:
    existing = _breakers.get(guard)
    if existing is not None:
        return existing
    with _lock:
        if guard not in _breakers:
            _breakers[guard] = pybreaker.CircuitBreaker(
                fail_max=1, reset_timeout=get_settings().guard_breaker_reset_s, name=guard,
                exclude=[lambda exc: not isinstance(exc, redis.RedisError)], listeners=[_WarnOnChange()])
        return _breakers[guard]


def guarded(guard: str, call: Callable[[], T]) -> T:
    """`call()` through the guard's breaker; raises one of GuardDown when the guard must be skipped."""
    try:
        return breaker(guard).call(call)
    except GuardDown:
        DEGRADED.labels(guard).inc()
        raise


def reset_breakers() -> None:
    """Forget breaker state (tests restart servers; the dev runner re-reads settings)."""
    with _lock:
        _breakers.clear()
