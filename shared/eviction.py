"""Start-up check of each store's eviction policy.

A broker or progress server that evicts keys silently loses turns or events, so a
process refuses to start on one. An exec cache that is not LRU only costs hit rate,
so it gets a warning."""

import logging
from dataclasses import dataclass

import redis

from shared import defaults
from shared.redis_stores import client
from shared.settings import get_settings

log = logging.getLogger(__name__)


class EvictingStoreError(RuntimeError):
    """A store that must never evict runs on a server that does."""


@dataclass(frozen=True)
class EvictionReport:
    store: str
    policy: str | None
    ok: bool
    message: str


def read_eviction(r: redis.Redis) -> str | None:
    try:
        return r.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.ResponseError:
        return None  # CONFIG is disabled (some managed Redis); we cannot tell.


def judge_eviction(store: str, policy: str | None) -> EvictionReport:
    """Pure rule: is eviction policy `policy` acceptable for `store`?"""
    required = defaults.REQUIRED_EVICTION.get(store)
    if policy is None:
        return EvictionReport(store, None, True, f"{store}: cannot read maxmemory-policy (CONFIG disabled?)")
    if required and policy != required:
        return EvictionReport(store, policy, False, f"{store}: maxmemory-policy is {policy}, must be {required}")
    if store == "exec_cache" and "lru" not in policy:
        return EvictionReport(store, policy, True, f"exec_cache: maxmemory-policy is {policy}; an LRU policy is recommended")
    return EvictionReport(store, policy, True, "")


def check_evictions(stores: tuple[str, ...] = defaults.STORES) -> list[EvictionReport]:
    """Read every store's policy; raise EvictingStoreError if one that must not evict does."""
    settings = get_settings()
    if settings.single_instance:
        log.warning(
            "single-instance mode: all four stores share %s (DB 0-3); one full or failing server "
            "now degrades every domain at once", settings.redis_url)
    reports = [judge_eviction(store, read_eviction(client(store))) for store in stores]
    for report in reports:
        if report.message and report.ok:
            log.warning(report.message)
    failures = [r.message for r in reports if not r.ok]
    if failures:
        raise EvictingStoreError("; ".join(failures))
    return reports
