"""Both guards around one tool call, in the order that keeps cached results safe: permission first
(the memo; a hit is cheap), then the execution cache. It takes any callable, so it wraps a tool
whether it runs in-process, over MCP or anywhere else."""

import time
from dataclasses import dataclass
from typing import Any, Callable

from shared.guards import auth_memo, declarations, exec_cache, stats
from shared.guards.auth_memo import PermissionUnavailable
from shared.identity import Principal
from shared.vocabulary import TOOL_DENIED, TOOL_ERROR, TOOL_OK, ToolStatus

__all__ = ["GuardedCall", "PermissionUnavailable", "denied_message", "guarded_call", "unavailable_message"]


@dataclass(frozen=True)
class GuardedCall:
    """What a progress event reports: status ok/error/denied, the permission answer, the cache result."""

    tool: str
    status: ToolStatus
    result: Any
    error: str | None
    permission: dict
    cache: str | None
    duration_ms: float


def denied_message(tool: str) -> str:
    return f"You may not use {tool}"


def unavailable_message(tools: list[str], reason: str) -> str:
    return (f"cannot check permission for {', '.join(tools)} (no tool was run): {reason}. "
            "Try again when the permission service is back.")


def guarded_call(principal: Principal, tool: str, args: dict, fn: Callable[[dict], Any],
                 declared: dict | None = None) -> GuardedCall:
    """Check, then run through the cache. Raises PermissionUnavailable (fail closed) when the verifier
    cannot answer and no memo exists. `declared` is the tool's own cache declaration (e.g. from its MCP
    metadata: {"cache": "global"|"tenant"|"user"|"never", "ttl_s": ...}); the declarations file wins."""
    started = time.perf_counter()
    decision = auth_memo.check(principal, tool)
    if decision.unavailable:
        raise PermissionUnavailable(unavailable_message([tool], decision.error or "verifier unavailable"))
    if not decision.allowed:
        return GuardedCall(tool, TOOL_DENIED, None, denied_message(tool), decision.as_event(), None,
                           round((time.perf_counter() - started) * 1000, 2))
    cached = exec_cache.run(declarations.declaration(tool, declared), args, principal, fn)
    stats.record_exec_cache(cached.cache)
    return GuardedCall(tool, TOOL_OK if cached.ok else TOOL_ERROR, cached.value, cached.error, decision.as_event(),
                       cached.cache, round((time.perf_counter() - started) * 1000, 2))
