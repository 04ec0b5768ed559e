"""Per-user limit on turn creation, counted on the broker instance with the `limits` library.

A moving window: `TURNSTREAM_TURN_RATE_LIMIT` (e.g. "60/minute") turns per user, across
every web process. Over it, the answer is 429 with the seconds until a slot frees up."""

import math
import time

import limits
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from shared import keys
from shared.breakers import breaker
from shared.identity import Principal
from shared.redis_stores import client
from shared.settings import Settings
from web.errors import ApiError


class TurnRateLimiter:
    def __init__(self, settings: Settings):
        self.limit = limits.parse(settings.turn_rate_limit)
        storage = RedisStorage(settings.store_url("broker"), connection_pool=client("broker").connection_pool,
                               key_prefix=keys.RATE_LIMIT_PREFIX)
        self._limiter = MovingWindowRateLimiter(storage)

    def hit(self, principal: Principal) -> None:
        """Count one turn for `principal`, or raise a 429 if their window is full."""
        identity = keys.turn_rate_limit_identity(principal.tenant, principal.user)
        if breaker("broker").call(self._limiter.hit, self.limit, identity):
            return
        stats = breaker("broker").call(self._limiter.get_window_stats, self.limit, identity)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise ApiError(429, "rate_limited", f"at most {self.limit} new turns per user; retry in {retry_after}s",
                       {"Retry-After": str(retry_after)})
