"""Where the tool-call guards plug in: the preflight in `discover` and the wrap around each call.

These are the only two places the agent consults the guards. The permission memo and the
execution cache (shared/auth_memo.py, shared/exec_cache.py) replace the bodies below; until
they land, a tool is allowed when it declares no roles or the caller has one of them, and
every call runs uncached."""

import time
from typing import Any, Callable


def caller(turn: dict) -> dict:
    """Who the turn is for, from the signed token the web tier checked."""
    return {"user": turn["user"], "tenant": turn["tenant"], "roles": list(turn.get("roles", []))}


def _permitted(who: dict, tool: dict) -> bool:
    wanted = tool.get("policy", {}).get("roles") or []
    return not wanted or bool(set(wanted) & set(who["roles"]))


def preflight(who: dict, tools: list[dict]) -> list[dict]:
    """The tools `who` may call; the rest are never shown to the reasoner."""
    return [tool for tool in tools if _permitted(who, tool)]


def guarded_call(who: dict, tool: dict, args: dict, run: Callable[[], Any]) -> tuple[Any, dict]:
    """Run one call behind the guards: permission first (again, as defense in depth), cache second.
    Returns the result and what the guards did, for the tool's progress event."""
    started = time.perf_counter()
    if not _permitted(who, tool):
        raise PermissionError(f"{tool['name']} is not allowed for roles {who['roles']}")
    permission = {"allowed": True, "memo": "none", "check_ms": round((time.perf_counter() - started) * 1000, 2)}
    return run(), {"permission": permission, "cache": "bypass"}
