"""Built-in tools, called in-process: weather, knowledge-base search, calculator.

Each tool is a plain function of JSON arguments returning JSON; the simulated upstream
latency (TURNSTREAM_TOOL_LATENCY_MS) makes the demo look like real work and is 0 in tests."""

import ast
import json
import operator
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Callable

from shared.settings import get_settings


class ToolError(Exception):
    """A tool ran but could not answer (bad arguments, unknown city...)."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict
    run: Callable[[dict], dict]


@lru_cache(maxsize=None)
def _data(name: str):
    return json.loads(resources.files("workers.data").joinpath(name).read_text())


def _simulate_upstream() -> None:
    latency_ms = get_settings().tool_latency_ms
    if latency_ms > 0:
        time.sleep(latency_ms / 1000)


def weather(args: dict) -> dict:
    _simulate_upstream()
    city = str(args.get("city", "")).strip().lower()
    report = _data("weather.json").get(city)
    if report is None:
        raise ToolError(f"no weather data for {args.get('city')!r}")
    return report


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2}


def search_kb(args: dict) -> dict:
    _simulate_upstream()
    query = _words(str(args.get("query", "")))
    scored = [(len(query & _words(doc["title"] + " " + doc["text"])), doc) for doc in _data("kb.json")]
    hits = [doc for score, doc in sorted(scored, key=lambda pair: -pair[0]) if score > 0][: int(args.get("limit", 3))]
    return {"hits": hits}


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.Pow: operator.pow, ast.Mod: operator.mod, ast.USub: operator.neg, ast.UAdd: operator.pos}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        if isinstance(node.op, ast.Pow) and abs(_evaluate(node.right)) > 100:
            raise ToolError("exponent too large")
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    raise ToolError("only numbers and + - * / % ** ( ) are allowed")


def calculator(args: dict) -> dict:
    expression = str(args.get("expression", ""))
    if len(expression) > 200:
        raise ToolError("expression too long")
    try:
        value = _evaluate(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ZeroDivisionError) as exc:
        raise ToolError(f"cannot evaluate {expression!r}: {exc}") from exc
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return {"expression": expression, "value": value}


BUILTIN_TOOLS: dict[str, Tool] = {
    tool.name: tool for tool in (
        Tool("weather", "Current weather for a city.",
             {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}, weather),
        Tool("search_kb", "Search the help-center knowledge base.",
             {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}, search_kb),
        Tool("calculator", "Evaluate an arithmetic expression.",
             {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
             calculator),
    )
}
