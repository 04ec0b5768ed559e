"""The tool-call guards at the agent's two points: the preflight in `discover`, the wrap around
each call in `call_tool`. The guards themselves live in shared/ (auth_memo, exec_cache,
tool_guards); this module only speaks the agent's terms (catalogue entries from MCP)."""

from typing import Any, Callable

from shared.guards import auth_memo
from shared.guards.call import GuardedCall, PermissionUnavailable, guarded_call, unavailable_message
from shared.identity import Principal

__all__ = ["GuardedCall", "PermissionUnavailable", "caller", "guarded_tool_call", "preflight", "principal"]


def principal(turn: dict) -> Principal:
    """Who the turn is for, from the signed token the web tier checked."""
    return Principal(user=turn["user"], tenant=turn["tenant"], roles=tuple(turn.get("roles", ())))


def caller(turn: dict) -> dict:
    """The same, as the MCP client sends it in each call's `_meta`."""
    return {"user": turn["user"], "tenant": turn["tenant"], "roles": list(turn.get("roles", ()))}


def preflight(who: Principal, tools: list[dict]) -> list[dict]:
    """The tools `who` may call, checked in one batch; the rest are never shown to the reasoner.
    Fails closed: a tool whose permission cannot be checked (verifier down, no memo) stops the
    turn with PermissionUnavailable rather than being offered or silently dropped."""
    checked = auth_memo.preflight(who, [tool["name"] for tool in tools])
    if checked.unavailable:
        blocked = sorted(checked.unavailable)
        raise PermissionUnavailable(unavailable_message(blocked, checked.decisions[blocked[0]].error or ""))
    allowed = set(checked.allowed)
    return [tool for tool in tools if tool["name"] in allowed]


def guarded_tool_call(who: Principal, tool: dict, args: dict, run: Callable[[dict], Any]) -> GuardedCall:
    """One call: permission again (a memo hit is cheap), then the execution cache, with the tool's
    own cache declaration from its MCP metadata (the declarations file wins over it)."""
    return guarded_call(who, tool["name"], args, run, declared=tool.get("cache_declaration"))
