"""The rules reasoner: a deterministic keyword planner, for tests and machines without a model.

`plan` turns a prompt into tool calls; `answer` turns the tool results into prose."""

import re

from workers.tools import BUILTIN_TOOLS

_CITIES = ("new york", "paris", "london", "berlin", "tokyo", "sydney", "madrid", "rome")
# An arithmetic expression is a run of these characters with a digit, an operator, then a digit.
# Found in two linear passes: one regex with nested stars took cubic time on long digit runs
# (a 4,000-character prompt kept a worker thread busy for minutes; schemathesis found it).
_ARITHMETIC_RUN = re.compile(r"[-+*/%().\d\s]+")
_DIGIT = re.compile(r"\d")
_OPERATOR = re.compile(r"[-+*/%]")


def find_arithmetic(prompt: str) -> str | None:
    """The first run of arithmetic characters holding digit, operator, digit; None if there is none."""
    for run in _ARITHMETIC_RUN.finditer(prompt):
        text = run.group()
        digit = _DIGIT.search(text)
        operator = _OPERATOR.search(text, digit.end()) if digit else None
        if operator and _DIGIT.search(text, operator.end()):
            return text.strip()
    return None


def plan(prompt: str, available: list[str] | None = None) -> list[dict]:
    """Tool calls for `prompt`, each {"tool", "args"}; only tools in `available` are used."""
    allowed = set(available if available is not None else BUILTIN_TOOLS)
    text = prompt.lower()
    calls: list[dict] = []
    if "weather" in allowed and re.search(r"weather|temperature|forecast|rain|sunny", text):
        calls += [{"tool": "weather", "args": {"city": city.title()}} for city in _CITIES if city in text]
    expression = find_arithmetic(prompt)
    if "calculator" in allowed and expression:
        calls.append({"tool": "calculator", "args": {"expression": expression}})
    if "search_kb" in allowed and not calls:
        calls.append({"tool": "search_kb", "args": {"query": prompt}})
    return calls


def _describe(call: dict) -> str:
    tool, result = call["tool"], call.get("result")
    if call.get("status") != "ok":
        return f"I could not use {tool}: {call.get('error', 'it failed')}."
    if tool == "weather":
        return (f"In {result['city']} it is {result['temp_c']}°C with {result['condition']} "
                f"and wind at {result['wind_kmh']} km/h.")
    if tool == "calculator":
        return f"{result['expression']} = {result['value']}."
    if tool == "search_kb":
        hits = result.get("hits", [])
        if not hits:
            return "I found nothing in the knowledge base about that."
        return " ".join(f"{hit['title']}: {hit['text']}" for hit in hits[:2])
    return f"{tool} returned {result}."


def answer(prompt: str, calls: list[dict]) -> str:
    if not calls:
        return "I have no tool that can help with that."
    return " ".join(_describe(call) for call in calls)
