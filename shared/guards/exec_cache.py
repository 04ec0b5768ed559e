"""The deterministic execution cache: a tool call's result, shared by every identical call.

Identical means: the same tool, the same scope (everyone, the tenant, or the user) and the same
stable parameters. The key is the tool id + scope + sha256 of the canonical JSON of the
parameters with volatile fields (timestamps, request ids, UI hints...) removed at any depth;
canonical JSON keeps the names and sorts keys recursively, so {"a": 1} and {"b": 1} differ but
key order does not matter.

On a miss exactly one caller runs the tool, across processes and machines (single-flight): it
takes a lease (SET NX PX) and, when done, stores the result and appends the outcome to a
one-entry stream that the waiters block on (XREAD BLOCK: woken, not polling). A waiter whose
owner died takes the lease over once it expires; one that waited TURNSTREAM_EXEC_CACHE_WAIT_S
runs the tool itself. Errors are shared with the callers that waited but cached only if
TURNSTREAM_EXEC_CACHE_ERROR_TTL_S > 0. A result is cached only if it round-trips exactly
through JSON and fits TURNSTREAM_EXEC_CACHE_MAX_BYTES. If the cache's Redis is down the tool
simply runs. `run` does not care how a tool runs: it wraps any callable."""

import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, NamedTuple

import redis

from shared import keys
from shared.guards.declarations import Declarations, Scope, ToolSpec, load_declarations, normalize_name
from shared.guards.degradation import GuardDown, guard_redis_call
from shared.identity import Principal
from shared.redis_stores import PerClient, client
from shared.settings import get_settings

log = logging.getLogger(__name__)

GUARD = "exec_cache"
OK, ERROR, RUN_YOURSELF = "o", "e", "r"


# KEYS: result, lease, done. ARGV: lease token, lease ms.
_ACQUIRE = """
local value = redis.call('GET', KEYS[1])
if value then return {'hit', value} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[3])
  return {'own', ''}
end
return {'wait', tostring(redis.call('PTTL', KEYS[2]))}
"""

# KEYS: result, lease, done. ARGV: lease token, value to store ('' = none), ttl s, notice, notice ttl ms.
_COMPLETE = """
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
redis.call('XADD', KEYS[3], 'MAXLEN', '1', '*', 'outcome', ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""

# KEYS: lease. ARGV: lease token, lease ms. Extends the lease only while we still hold it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


# --- Keys ------------------------------------------------------------------------------------------------

def strip_volatile(value: Any, volatile: frozenset[str]) -> Any:
    """`value` without the fields named in `volatile`, at any depth. Non-string keys are refused:
    JSON would turn 1 and "1" into the same name."""
    if isinstance(value, dict):
        stable = {}
        for name, item in value.items():
            if not isinstance(name, str):
                raise TypeError(f"parameter names must be strings, not {type(name).__name__}")
            if normalize_name(name) not in volatile:
                stable[name] = strip_volatile(item, volatile)
        return stable
    if isinstance(value, (list, tuple)):
        return [strip_volatile(item, volatile) for item in value]
    return value


# Built once: json.dumps with non-default options builds a new encoder on every call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_EXACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value: Any) -> str:
    """Names kept, keys sorted at every depth, no whitespace; NaN and non-JSON values raise."""
    return _CANONICAL.encode(value)


class CacheKey(NamedTuple):
    tool: str
    scope: str
    digest: str

    @property
    def result(self) -> str:
        return keys.exec_result(self.tool, self.scope, self.digest)

    @property
    def lease(self) -> str:
        return keys.exec_lease(self.tool, self.scope, self.digest)

    @property
    def done(self) -> str:
        return keys.exec_done(self.tool, self.scope, self.digest)


def scope_of(spec: ToolSpec, principal: Principal) -> str:
    return _scope(spec.scope, principal.tenant, principal.user)


@lru_cache(maxsize=4096)
def _scope(scope: Scope, tenant: str, user: str) -> str:
    if scope == "global":
        return "global"
    if scope == "tenant":
        return f"tenant.{keys.valid_id(tenant, 'tenant')}"
    return f"user.{keys.valid_id(tenant, 'tenant')}.{keys.valid_id(user, 'user')}"


@lru_cache(maxsize=1024)
def _volatile(global_names: frozenset[str], tool_names: frozenset[str]) -> frozenset[str]:
    return global_names | tool_names


def cache_key(spec: ToolSpec, params: Any, principal: Principal, volatile: frozenset[str] = frozenset()) -> CacheKey:
    stable = strip_volatile(params, _volatile(volatile, spec.volatile))
    digest = hashlib.sha256(canonical_json(stable).encode()).hexdigest()
    return CacheKey(keys.valid_tool(spec.name), scope_of(spec, principal), digest)


def encode_exact(value: Any) -> str | None:
    """JSON text that decodes back to exactly `value`, or None (tuples, non-string keys, NaN, objects)."""
    try:
        text = _EXACT.encode(value)
    except (TypeError, ValueError):
        return None
    return text if json.loads(text) == value else None


# --- Running through the cache -------------------------------------------------------------------------------

@dataclass(slots=True)
class CacheRun:
    """A tool call's result as the cache saw it. `cache` is "hit", "miss" (this caller ran the tool),
    "coalesced" (another caller's run, shared) or "bypass" (not cacheable, or the cache is down)."""

    ok: bool
    value: Any
    error: str | None
    cache: str
    duration_ms: float


class ExecCache:
    def __init__(self, r: redis.Redis, declarations: Declarations, default_ttl_s: int, max_bytes: int,
                 error_ttl_s: int, lease_s: float, wait_s: float, block_cap_s: float):
        self.redis = r
        self.declarations = declarations
        self.default_ttl_s = default_ttl_s
        self.max_bytes = max_bytes
        self.error_ttl_s = error_ttl_s
        self.lease_ms = max(1, int(lease_s * 1000))
        self.wait_s = wait_s
        self.block_cap_ms = max(1, int(block_cap_s * 1000))
        self._acquire = r.register_script(_ACQUIRE)
        self._complete = r.register_script(_COMPLETE)
        self._renew = r.register_script(_RENEW)

    @classmethod
    def from_settings(cls) -> "ExecCache":
        s = get_settings()
        # A blocking read must end before the socket timeout does, or redis-py reports a dead connection.
        block_cap_s = max(0.2, s.redis_socket_timeout_s - 1.0)
        return cls(client("exec_cache"), load_declarations(s.exec_cache_tools_file), s.exec_cache_ttl_s,
                   s.exec_cache_max_bytes, s.exec_cache_error_ttl_s, s.exec_cache_lease_s, s.exec_cache_wait_s,
                   block_cap_s)

    def key(self, spec: ToolSpec, params: Any, principal: Principal) -> CacheKey:
        return cache_key(spec, params, principal, self.declarations.volatile)

    def run(self, spec: ToolSpec | str, params: dict, principal: Principal, fn: Callable[[dict], Any]) -> CacheRun:
        """`fn(params)`'s result, from the cache when an identical call's result is there or under way.
        Whatever `fn` raises becomes an error outcome (the caller reports it; the turn goes on)."""
        started = time.perf_counter()
        spec = self.declarations.spec(spec) if isinstance(spec, str) else spec
        if not spec.cacheable:
            return self._direct(params, fn, started)
        try:
            key = self.key(spec, params, principal)
        except (TypeError, ValueError) as exc:
            log.info("%s: parameters are not canonical JSON (%s); running uncached", spec.name, exc)
            return self._direct(params, fn, started)
        try:
            stored = guard_redis_call(GUARD, lambda: self.redis.get(key.result))
        except GuardDown as exc:
            log.warning("exec cache unavailable (%s): running %s uncached", type(exc).__name__, spec.name)
            return self._direct(params, fn, started)
        if stored is not None:
            return self._finish(stored, "hit", started)
        return self._single_flight(spec, key, params, fn, started)

    # --- internals -------------------------------------------------------------------------------------------
    def _single_flight(self, spec: ToolSpec, key: CacheKey, params: dict, fn: Callable[[dict], Any],
                       started: float) -> CacheRun:
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.wait_s
        names = [key.result, key.lease, key.done]
        try:
            while True:
                state, payload = guard_redis_call(GUARD, lambda: self._acquire(keys=names, args=[token, self.lease_ms]))
                if state == "hit":
                    return self._finish(payload, "hit", started)
                if state == "own":
                    return self._own(spec, key, token, params, fn, started)
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                if remaining_ms <= 0:
                    log.warning("%s: waited %.0fs for another caller's run; running it here", spec.name, self.wait_s)
                    return self._direct(params, fn, started, cache="miss")
                lease_ms = int(payload) if int(payload) > 0 else 1
                block_ms = max(1, min(remaining_ms, lease_ms + 5, self.block_cap_ms))
                reply = guard_redis_call(GUARD, lambda ms=block_ms: self.redis.xread({key.done: "0-0"}, count=1, block=ms))
                if reply:
                    notice = reply[0][1][0][1]["outcome"]
                    if notice == RUN_YOURSELF:
                        return self._direct(params, fn, started, cache="miss")
                    return self._finish(notice, "coalesced", started)
        except GuardDown as exc:
            log.warning("exec cache unavailable (%s): running %s uncached", type(exc).__name__, spec.name)
            return self._direct(params, fn, started)

    def _own(self, spec: ToolSpec, key: CacheKey, token: str, params: dict, fn: Callable[[dict], Any],
             started: float) -> CacheRun:
        """We hold the lease: run (renewing it), store what may be stored, wake the waiters, release it."""
        stop_renewing = self._keep_lease(key, token)
        try:
            ok, value, error = _call(spec.name, fn, params)
        finally:
            stop_renewing()
        if ok:
            text = encode_exact(value)
            stored = OK + text if text is not None and len(text.encode()) <= self.max_bytes else ""
            notice, ttl_s = stored or RUN_YOURSELF, spec.ttl_s or self.default_ttl_s
        else:
            notice = ERROR + error
            stored, ttl_s = (notice if self.error_ttl_s > 0 else ""), max(1, self.error_ttl_s)
        try:
            guard_redis_call(GUARD, lambda: self._complete(keys=[key.result, key.lease, key.done],
                                                  args=[token, stored, ttl_s, notice, self.lease_ms]))
        except GuardDown as exc:
            log.warning("could not store %s's result (%s); waiters will take over", spec.name, type(exc).__name__)
        return self._result(ok, value, error, "miss", started)

    def _keep_lease(self, key: CacheKey, token: str) -> Callable[[], None]:
        """Renew the lease every third of its length while the tool runs, so a slow tool keeps it and
        only a dead owner (whose renewals stop) lets a waiter take over."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lease_ms / 3000):
                try:
                    if not self._renew(keys=[key.lease], args=[token, self.lease_ms]):
                        return
                except redis.RedisError:
                    return

        threading.Thread(target=renew, name="exec-cache-lease", daemon=True).start()
        return stop.set

    def _direct(self, params: dict, fn: Callable[[dict], Any], started: float, cache: str = "bypass") -> CacheRun:
        ok, value, error = _call(getattr(fn, "__name__", "tool"), fn, params)
        return self._result(ok, value, error, cache, started)

    def _finish(self, stored: str, cache: str, started: float) -> CacheRun:
        kind, body = stored[:1], stored[1:]
        if kind == OK:
            return self._result(True, json.loads(body), None, cache, started)
        return self._result(False, None, body, cache, started)

    @staticmethod
    def _result(ok: bool, value: Any, error: str | None, cache: str, started: float) -> CacheRun:
        return CacheRun(ok, value, error, cache, round((time.perf_counter() - started) * 1000, 2))


def _call(name: str, fn: Callable[[dict], Any], params: dict) -> tuple[bool, Any, str | None]:
    try:
        return True, fn(params), None
    except Exception as exc:  # a failing tool is a result to report, not a dead turn
        log.info("tool %s failed: %s", name, exc)
        return False, None, str(exc) or type(exc).__name__


_default = PerClient("exec_cache", ExecCache.from_settings)


def default() -> ExecCache:
    """The process's cache."""
    return _default.get()


def run(spec: ToolSpec | str, params: dict, principal: Principal, fn: Callable[[dict], Any]) -> CacheRun:
    return default().run(spec, params, principal, fn)
