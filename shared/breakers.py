"""One circuit breaker per Redis store, so a dead server costs one fast error instead of a
connect or socket timeout on every call.

A breaker counts consecutive connection failures and timeouts of its store. At
`breaker_fail_max` it opens: every call fails at once with StoreUnavailable (a
redis.ConnectionError, so existing `except redis.RedisError` handlers keep working).
After `breaker_reset_s` one trial call is let through (half-open); its success closes
the breaker, its failure opens it again. Other errors (a ResponseError, say) prove the
server answered and count as success, except the answers of a failover in progress (READONLY
from a demoted master, CLUSTERDOWN): under Sentinel or Cluster a failover is a short outage of
the store, and the breaker treats it like one.

This is a small breaker of our own rather than pybreaker because pybreaker holds its
lock for the whole protected call, which would serialize every Redis command of a
process and make concurrent requests queue behind one dead connection."""

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from shared import metrics
from shared.defaults import STORES
from shared.per_store import PerStore
from shared.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

CLOSED, HALF_OPEN, OPEN = "closed", "half-open", "open"
# A failover is an outage of the store too: a demoted master answers READONLY and a Cluster whose
# slot lost its master answers CLUSTERDOWN until a replica takes over. Counting them here makes
# the breaker open for the failover and close at the first call the new master serves.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError,
               redis.exceptions.ClusterDownError)



class StoreUnavailable(redis.ConnectionError):
    """The store's breaker is open: the call was not even tried."""

    def __init__(self, store: str):
        super().__init__(f"the {store} Redis is unavailable (circuit open)")
        self.store = store


class Breaker:
    def __init__(self, store: str, fail_max: int, reset_s: float, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.fail_max = fail_max
        self.reset_s = reset_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return CLOSED
        return HALF_OPEN if self._clock() - self._opened_at >= self.reset_s else OPEN

    def call(self, func: Callable[..., T], *args: object, **kwargs: object) -> T:
        self._before()
        try:
            result = func(*args, **kwargs)
        except UNAVAILABLE as exc:
            exc.store = self.store  # so an error handler can name the store that is down
            self._failure()
            raise
        except redis.RedisError:
            self._success()
            raise
        except BaseException:
            self._release_trial()
            raise
        self._success()
        return result

    def _before(self) -> None:
        with self._lock:
            state = self.state
            if state == CLOSED:
                return
            if state == HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return
        metrics.BREAKER_REJECTED.labels(self.store).inc()
        raise StoreUnavailable(self.store)

    def _success(self) -> None:
        with self._lock:
            was_open = self._opened_at is not None
            self._failures, self._opened_at, self._trial_running = 0, None, False
        if was_open:
            metrics.BREAKER_OPEN.labels(self.store).set(0)
            log.warning("%s Redis answers again: breaker closed", self.store)

    def _failure(self) -> None:
        metrics.REDIS_FAILURES.labels(self.store).inc()
        with self._lock:
            self._failures += 1
            was_open = self._opened_at is not None
            trip = was_open or self._failures >= self.fail_max
            if trip:
                self._opened_at = self._clock()
            self._trial_running = False
        if trip and not was_open:
            metrics.BREAKER_TRIPS.labels(self.store).inc()
            metrics.BREAKER_OPEN.labels(self.store).set(1)
            log.warning("%s Redis failed %d times in a row: breaker open, calls fail fast for %.1fs",
                        self.store, self.fail_max, self.reset_s)

    def _release_trial(self) -> None:
        with self._lock:
            self._trial_running = False


def _new_breaker(store: str) -> Breaker:
    settings = get_settings()
    return Breaker(store, settings.breaker_fail_max, settings.breaker_reset_s)


_breakers = PerStore(_new_breaker)


def breaker(store: str) -> Breaker:
    """The process-wide breaker of `store`."""
    return _breakers.get(store)


def states() -> dict[str, str]:
    return {store: breaker(store).state for store in STORES}


def reset_breakers() -> None:
    """Forget every breaker (after settings change)."""
    _breakers.clear()
