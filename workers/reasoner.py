"""The rules reasoner: a deterministic keyword planner, for tests and machines without a model.

`plan` turns a prompt into tool calls; `answer` turns the tool results into prose."""

import re

from workers.tools import BUILTIN_TOOLS

_CITIES = ("new york", "paris", "london", "berlin", "tokyo", "sydney", "madrid", "rome")
_ARITHMETIC = re.compile(r"[-+*/%().\d\s]*\d[-+*/%().\d\s]*[-+*/%][-+*/%().\d\s]*\d[-+*/%().\d\s]*")


def plan(prompt: str, available: list[str] | None = None) -> list[dict]:
    """Tool calls for `prompt`, each {"tool", "args"}; only tools in `available` are used."""
    allowed = set(available if available is not None else BUILTIN_TOOLS)
    text = prompt.lower()
    calls: list[dict] = []
    if "weather" in allowed and re.search(r"weather|temperature|forecast|rain|sunny", text):
        calls += [{"tool": "weather", "args": {"city": city.title()}} for city in _CITIES if city in text]
    expression = _ARITHMETIC.search(prompt)
    if "calculator" in allowed and expression:
        calls.append({"tool": "calculator", "args": {"expression": expression.group().strip()}})
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
