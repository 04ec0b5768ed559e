"""Permission preflight: "may this principal call this tool?", memoized on the auth_memo Redis.

One memo per tenant x user x tool. Its value records the answer and the stamp it was made
under: the generation counters (all, tenant, user, tool) and a fingerprint of the token's
roles. A batch lookup reads the counters and the memos in one MGET; a memo whose stamp no
longer matches is a miss. So invalidation is one INCR whatever the number of memos, and it
applies to the very next check. The stamp is read before the verifier is asked, so a memo
written while an invalidation happened is born stale rather than wrongly fresh.

Allows live TURNSTREAM_AUTH_MEMO_TTL_S (30 min), denies TURNSTREAM_AUTH_DENY_TTL_S (shorter, so
a new grant shows soon). Strict mode asks the verifier every time. If the memo's Redis is down
the verifier is asked directly; if the verifier cannot answer and no memo exists, the answer
is "not allowed" with the reason (fail closed). Nothing here ever turns a deny into an allow."""

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

import redis

from shared import keys
from shared.guards import stats
from shared.guards.degradation import GuardDown, guard_redis_call
from shared.guards.verifiers import Verifier, VerifierUnavailable, make_verifier
from shared.identity import Principal
from shared.redis_stores import PerClient, client, mget
from shared.settings import get_settings

log = logging.getLogger(__name__)

GUARD = "auth_memo"
ALLOW, DENY = "A", "D"


class PermissionUnavailable(RuntimeError):
    """No memo, and the verifier could not answer: the tool must not run."""


class Decision(NamedTuple):
    """One tool's answer. `memo` is "hit" (from the memo), "miss" (verifier asked, memo written) or
    "bypass" (verifier asked without the memo: strict mode, or the memo's Redis is down)."""

    tool: str
    allowed: bool
    memo: str
    error: str | None = None

    @property
    def unavailable(self) -> bool:
        return self.error is not None

    def as_event(self) -> dict:
        """The `permission` field of a tool progress event."""
        event = {"allowed": self.allowed, "memo": self.memo}
        if self.error:
            event["error"] = self.error
        return event


@dataclass(frozen=True)
class Preflight:
    decisions: dict[str, Decision] = field(default_factory=dict)

    @property
    def allowed(self) -> list[str]:
        return [tool for tool, d in self.decisions.items() if d.allowed]

    @property
    def denied(self) -> list[str]:
        return [tool for tool, d in self.decisions.items() if not d.allowed and not d.unavailable]

    @property
    def unavailable(self) -> list[str]:
        return [tool for tool, d in self.decisions.items() if d.unavailable]


@lru_cache(maxsize=4096)
def roles_fingerprint(roles: tuple[str, ...]) -> str:
    """Part of the stamp: a memo made for a token with other roles does not count for this one."""
    return hashlib.sha256("\n".join(sorted(set(roles))).encode()).hexdigest()[:16]


def memo_value(allowed: bool, stamp: str) -> str:
    return f"{ALLOW if allowed else DENY}|{stamp}"


def read_memo(value: str | None, stamp: str) -> bool | None:
    """The memoized answer if `value` was made under `stamp`; None (a miss) otherwise."""
    if not value:
        return None
    answer, _, made_under = value.partition("|")
    if made_under != stamp or answer not in (ALLOW, DENY):
        return None
    return answer == ALLOW


@lru_cache(maxsize=4096)
def split_names(tools: tuple) -> tuple[tuple, tuple[str, ...]]:
    """The tools without repeats, and those whose names a key can hold."""
    ordered = tuple(dict.fromkeys(tools))
    return ordered, tuple(t for t in ordered if isinstance(t, str) and keys.TOOL_PATTERN.fullmatch(t))


@lru_cache(maxsize=4096)
def lookup_keys(tenant: str, user: str, tools: tuple[str, ...]) -> list[str]:
    """What one batch reads: the three shared generations, each tool's generation, each memo.
    Cached: the same principal asks about the same tool list turn after turn."""
    return [keys.auth_generation_all(), keys.auth_generation_tenant(tenant), keys.auth_generation_user(user),
            *map(keys.auth_generation_tool, tools), *(keys.auth_memo(tenant, user, tool) for tool in tools)]


class AuthMemo:
    def __init__(self, r: redis.Redis, verifier: Verifier, allow_ttl_s: int, deny_ttl_s: int, strict: bool = False):
        self.redis = r
        self.verifier = verifier
        self.allow_ttl_s = allow_ttl_s
        self.deny_ttl_s = deny_ttl_s
        self.strict = strict

    @classmethod
    def from_settings(cls) -> "AuthMemo":
        settings = get_settings()
        return cls(client("auth_memo"), make_verifier(settings), settings.auth_memo_ttl_s, settings.auth_deny_ttl_s,
                   settings.auth_strict)

    # --- checking -----------------------------------------------------------------------------------------
    def preflight(self, principal: Principal, tools: list[str]) -> Preflight:
        """Decide every tool at once: one round trip for the memos, the misses verified concurrently."""
        ordered, valid = split_names(tuple(tools))
        decided = self._decide(principal, list(valid)).decisions if valid else {}
        # A name no key can hold is denied, never an error that could stop the turn.
        return Preflight({tool: decided.get(tool) or Decision(tool, False, "bypass") for tool in ordered})

    def _decide(self, principal: Principal, tools: list[str]) -> Preflight:
        names = lookup_keys(principal.tenant, principal.user, tuple(tools))
        if self.strict:
            return self._verify(principal, tools, {}, memo="bypass")
        try:
            values = guard_redis_call(GUARD, lambda: mget(self.redis, names))
        except GuardDown as exc:
            log.warning("auth memo unavailable (%s): asking the verifier directly", type(exc).__name__)
            return self._verify(principal, tools, {}, memo="bypass")
        stamps = self._stamps(principal, tools, values)
        decisions: dict[str, Decision] = {}
        misses: dict[str, str] = {}
        for tool, value in zip(tools, values[3 + len(tools):], strict=True):
            answer = read_memo(value, stamps[tool])
            if answer is None:
                misses[tool] = stamps[tool]
            else:
                decisions[tool] = Decision(tool, answer, "hit")
        if misses:
            decisions.update(self._verify(principal, list(misses), misses, memo="miss").decisions)
        return Preflight(decisions)

    def check(self, principal: Principal, tool: str) -> Decision:
        return self.preflight(principal, [tool]).decisions[tool]

    @staticmethod
    def _stamps(principal: Principal, tools: list[str], values: list[str | None]) -> dict[str, str]:
        common = ".".join(v or "0" for v in values[:3])
        fingerprint = roles_fingerprint(principal.roles)
        return {tool: f"{common}.{values[3 + i] or '0'}|{fingerprint}" for i, tool in enumerate(tools)}

    def _verify(self, principal: Principal, tools: list[str], stamps: dict[str, str], memo: str) -> Preflight:
        """Ask the verifier; memoize definite answers under the stamps read before asking."""
        answers = self.verifier.verify_many(principal, tools)
        decisions: dict[str, Decision] = {}
        to_write: dict[str, tuple[str, int]] = {}
        for tool in tools:
            answer = answers.get(tool, VerifierUnavailable(f"the verifier gave no answer for {tool}"))
            if isinstance(answer, VerifierUnavailable):
                decisions[tool] = Decision(tool, False, memo, error=str(answer))
                continue
            decisions[tool] = Decision(tool, answer, memo)
            if tool in stamps:
                ttl = self.allow_ttl_s if answer else self.deny_ttl_s
                name = keys.auth_memo(principal.tenant, principal.user, tool)
                to_write[name] = (memo_value(answer, stamps[tool]), ttl)
        if to_write:
            self._write(to_write)
        return Preflight(decisions)

    def _write(self, memos: dict[str, tuple[str, int]]) -> None:
        def write() -> None:
            pipe = self.redis.pipeline(transaction=False)
            for name, (value, ttl) in memos.items():
                pipe.set(name, value, ex=ttl)
            pipe.execute()
        try:
            guard_redis_call(GUARD, write)
        except GuardDown as exc:
            log.warning("could not write %d permission memos (%s)", len(memos), type(exc).__name__)


_default = PerClient("auth_memo", AuthMemo.from_settings)


def default() -> AuthMemo:
    """The process's memo."""
    return _default.get()


def preflight(principal: Principal, tools: list[str]) -> Preflight:
    """Every tool's answer from the process's memo. Each answer is one permission check in
    `turnstream_auth_memo_total` (and /ops), whether it came from a preflight or a single call."""
    checked = default().preflight(principal, tools)
    for memo, count in Counter(decision.memo for decision in checked.decisions.values()).items():
        stats.record_auth_memo(memo, count=count)
    return checked


def check(principal: Principal, tool: str) -> Decision:
    return preflight(principal, [tool]).decisions[tool]


def invalidation_target(user: str | None = None, tool: str | None = None, tenant: str | None = None,
                        everything: bool = False) -> tuple[str, str | bool]:
    """The one scope an invalidation names, and its target: exactly one of a user, a tool, a
    tenant, or everything. The API, the CLI and `invalidate` all ask here; ValueError otherwise."""
    chosen = [(name, value) for name, value in (("user", user), ("tool", tool), ("tenant", tenant)) if value]
    if everything:
        chosen.append(("all", True))
    if len(chosen) != 1:
        raise ValueError("name exactly one of user, tool, tenant or all")
    return chosen[0]


def invalidate(*, user: str | None = None, tool: str | None = None, tenant: str | None = None,
               everything: bool = False, r: redis.Redis | None = None) -> dict:
    """Make every memo of one user, tool, tenant (or all) stale with one INCR. Redis errors propagate:
    an invalidation that did not happen must not look like one that did."""
    scope, target = invalidation_target(user, tool, tenant, everything)
    key = {"user": keys.auth_generation_user, "tool": keys.auth_generation_tool,
           "tenant": keys.auth_generation_tenant}[scope](target) if scope != "all" else keys.auth_generation_all()
    generation = (r or client("auth_memo")).incr(key)
    log.info("permission memos invalidated: %s=%s (generation %d)", scope, target, generation)
    return {"scope": scope, "target": target, "generation": generation}
