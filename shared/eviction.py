"""Start-up check of each role's eviction policy.

A broker or progress server that evicts keys silently loses turns or events, so a
process refuses to start on one. An exec cache that is not LRU only costs hit rate,
so it gets a warning."""

import logging
from dataclasses import dataclass

import redis

from shared import defaults
from shared.redis_roles import client
from shared.settings import get_settings

log = logging.getLogger(__name__)


class EvictingRoleError(RuntimeError):
    """A role that must never evict runs on a server that does."""


@dataclass(frozen=True)
class EvictionReport:
    role: str
    policy: str | None
    ok: bool
    message: str


def read_eviction(r: redis.Redis) -> str | None:
    try:
        return r.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.ResponseError:
        return None  # CONFIG is disabled (some managed Redis); we cannot tell.


def judge_eviction(role: str, policy: str | None) -> EvictionReport:
    """Pure rule: is eviction policy `policy` acceptable for `role`?"""
    required = defaults.REQUIRED_EVICTION.get(role)
    if policy is None:
        return EvictionReport(role, None, True, f"{role}: cannot read maxmemory-policy (CONFIG disabled?)")
    if required and policy != required:
        return EvictionReport(role, policy, False, f"{role}: maxmemory-policy is {policy}, must be {required}")
    if role == "exec_cache" and "lru" not in policy:
        return EvictionReport(role, policy, True, f"exec_cache: maxmemory-policy is {policy}; an LRU policy is recommended")
    return EvictionReport(role, policy, True, "")


def check_evictions(roles: tuple[str, ...] = defaults.ROLES) -> list[EvictionReport]:
    """Read every role's policy; raise EvictingRoleError if one that must not evict does."""
    settings = get_settings()
    if settings.single_instance:
        log.warning(
            "single-instance mode: all four roles share %s (DB 0-3); one full or failing server "
            "now degrades every domain at once", settings.redis_url)
    reports = [judge_eviction(role, read_eviction(client(role))) for role in roles]
    for report in reports:
        if report.message and report.ok:
            log.warning(report.message)
    failures = [r.message for r in reports if not r.ok]
    if failures:
        raise EvictingRoleError("; ".join(failures))
    return reports
