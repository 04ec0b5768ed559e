"""The built-in tools as plain functions of JSON arguments, so they are easy to test directly.

The MCP server (workers.toolserver.server) exposes them; the simulated upstream latency
(TURNSTREAM_TOOL_LATENCY_MS) makes the demo look like real work and is 0 in tests."""

import ast
import json
import math
import operator
import re
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from shared.settings import get_settings


class ToolFailure(Exception):
    """A tool ran but could not answer (bad arguments, unknown city...)."""


@dataclass(frozen=True)
class Caller:
    """Who a call is for, as the MCP client states it in the request's _meta."""

    user: str | None = None
    tenant: str | None = None
    roles: tuple[str, ...] = ()


@lru_cache(maxsize=None)
def _data(name: str):
    return json.loads(resources.files("workers.toolserver.data").joinpath(name).read_text())


def upstream_latency_s() -> float:
    return max(get_settings().tool_latency_ms, 0) / 1000


def weather(city: str) -> dict:
    report = _data("weather.json").get(city.strip().lower())
    if report is None:
        known = ", ".join(sorted(r["city"] for r in _data("weather.json").values()))
        raise ToolFailure(f"no weather data for {city!r}; known cities: {known}")
    return report


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2}


def search_kb(query: str, limit: int = 3) -> dict:
    words = _words(query)
    scored = [(len(words & _words(doc["title"] + " " + doc["text"])), doc) for doc in _data("kb.json")]
    hits = [doc for score, doc in sorted(scored, key=lambda pair: -pair[0]) if score > 0]
    return {"query": query, "hits": hits[: max(1, min(limit, 10))]}


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.Pow: operator.pow, ast.Mod: operator.mod, ast.USub: operator.neg, ast.UAdd: operator.pos}
MAX_EXPONENT = 100
# Results are bounded by size, not only exponents: (((9**99)**99)**99)**99 has small exponents and
# a result of about 3 * 10**8 digits, whose computation would hold the CPU for minutes.
MAX_RESULT_BITS = 3322  # about 1,000 decimal digits


def _too_large() -> ToolFailure:
    return ToolFailure(f"the result would be too large (over {round(MAX_RESULT_BITS * 0.30103)} digits)")


def _power(base: float, exponent: float) -> float:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolFailure(f"exponent too large (at most {MAX_EXPONENT})")
    # The size of an integer power is known before computing it: bits(base) * exponent.
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 \
            and (abs(base).bit_length() - 1) * exponent > MAX_RESULT_BITS:
        raise _too_large()
    return base ** exponent


def _apply(op: ast.AST, *operands: float) -> float:
    try:
        value = _power(*operands) if isinstance(op, ast.Pow) else _OPERATORS[type(op)](*operands)
    except OverflowError as exc:
        raise _too_large() from exc
    if isinstance(value, complex):
        raise ToolFailure("the result is not a real number")
    return _bounded(value)


def _bounded(value: float) -> float:
    if (isinstance(value, int) and value.bit_length() > MAX_RESULT_BITS) or \
            (isinstance(value, float) and not math.isfinite(value)):
        raise _too_large()
    return value


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return _bounded(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _apply(node.op, _evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _apply(node.op, _evaluate(node.operand))
    raise ToolFailure("only numbers and + - * / % ** ( ) are allowed")


def calculator(expression: str) -> dict:
    if len(expression) > 200:
        raise ToolFailure("expression too long")
    try:
        value = _evaluate(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ZeroDivisionError) as exc:
        raise ToolFailure(f"cannot evaluate {expression!r}: {exc}") from exc
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return {"expression": expression, "value": value}


def my_orders(caller: Caller, status: str | None = None) -> dict:
    """The caller's own orders: the identity comes from the call's metadata, never from the model."""
    if not caller.user or not caller.tenant:
        raise ToolFailure("my_orders needs to know the caller (user and tenant in the request metadata)")
    orders = _data("orders.json").get(f"{caller.tenant}/{caller.user}", [])
    if status:
        orders = [o for o in orders if o["status"] == status.strip().lower()]
    return {"user": caller.user, "orders": orders}


def create_ticket(caller: Caller, subject: str, body: str = "", tickets_file: Path | None = None) -> dict:
    """Opens a support ticket: a side effect (a line appended to the tickets file), so never cached."""
    if "admin" not in caller.roles:
        raise ToolFailure("create_ticket is admin-only")
    subject = subject.strip()
    if not subject:
        raise ToolFailure("a ticket needs a subject")
    ticket = {"ticket_id": "T-" + uuid.uuid4().hex[:8].upper(), "subject": subject[:200], "body": body[:2000],
              "opened_by": f"{caller.tenant}/{caller.user}", "opened_at": time.time(), "status": "open"}
    path = tickets_file or Path(get_settings().tickets_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(ticket) + "\n")
    return ticket


# The stages of the sales report, each a slice of its (configurable) duration; the server
# reports one progress notification per stage, so a client can show how far along it is.
REPORT_STAGES = ("Collecting orders", "Totalling by item", "Comparing with last period", "Writing the summary")


def report_duration_s() -> float:
    return max(get_settings().report_duration_s, 0.0)


def sales_report(caller: Caller) -> dict:
    """The caller's sales summary, from their orders (the slow part is the server's, not this)."""
    if not caller.user or not caller.tenant:
        raise ToolFailure("sales_report needs to know the caller (user and tenant in the request metadata)")
    orders = _data("orders.json").get(f"{caller.tenant}/{caller.user}", [])
    by_status: dict[str, int] = {}
    for order in orders:
        by_status[order["status"]] = by_status.get(order["status"], 0) + 1
    return {"user": caller.user, "orders": len(orders), "total_eur": round(sum(o["total_eur"] for o in orders), 2),
            "by_status": by_status}
