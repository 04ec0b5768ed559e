"""The rules reasoner: a deterministic keyword planner, for tests and machines without a model.

It uses only the tools it was offered, follows up on the previous turn (a bare city after a
weather question asks for that city's weather), and plans a second round when the first one's
results decide it (a ticket about "my order" needs the order first)."""

import re

from workers.reasoners.base import Emit, Reasoner, TurnContext

_CITIES = ("new york", "paris", "london", "berlin", "tokyo", "sydney", "madrid", "rome")
# An arithmetic expression is a run of these characters with a digit, an operator, then a digit.
# Found in linear passes: one regex with nested stars took cubic time on long digit runs
# (a 4,000-character prompt kept a worker thread busy for minutes; schemathesis found it).
_ARITHMETIC_RUN = re.compile(r"[-+*/%().\d\s]+")
_DIGIT = re.compile(r"\d")
_OPERATOR = re.compile(r"[-+*/%]")
_WEATHER = re.compile(r"weather|temperature|forecast|rain|sunny|warm|cold")
_ORDERS = re.compile(r"\bmy (latest |last |recent )?orders?\b|\bwhere is my\b")
_REPORT = re.compile(r"\bsales report\b")


def find_arithmetic(prompt: str) -> str | None:
    """The first run of arithmetic characters holding digit, operator, digit; None if there is none."""
    for run in _ARITHMETIC_RUN.finditer(prompt):
        text = run.group()
        digit = _DIGIT.search(text)
        operator = _OPERATOR.search(text, digit.end()) if digit else None
        if operator and _DIGIT.search(text, operator.end()):
            return text.strip()
    return None


def _cities(text: str) -> list[str]:
    return [city.title() for city in _CITIES if city in text]


def _last_tools(ctx: TurnContext) -> list[str]:
    return ctx.history[-1].get("tools", []) if ctx.history else []


def _first_round(ctx: TurnContext) -> list[dict]:
    text, allowed = ctx.prompt.lower(), ctx.tool_names
    calls: list[dict] = []
    if "weather" in allowed and (_WEATHER.search(text) or "weather" in _last_tools(ctx)):
        calls += [{"tool": "weather", "args": {"city": city}} for city in _cities(text)]
    expression = find_arithmetic(ctx.prompt)
    if "calculator" in allowed and expression:
        calls.append({"tool": "calculator", "args": {"expression": expression}})
    wants_ticket = "ticket" in text and "create_ticket" in allowed
    if "sales_report" in allowed and _REPORT.search(text):
        calls.append({"tool": "sales_report", "args": {}})
    if "my_orders" in allowed and _ORDERS.search(text):
        calls.append({"tool": "my_orders", "args": {}})
    elif wants_ticket:
        calls.append({"tool": "create_ticket", "args": {"subject": ctx.prompt[:120], "body": ctx.prompt}})
    if "search_kb" in allowed and not calls:
        calls.append({"tool": "search_kb", "args": {"query": ctx.prompt}})
    return calls


def _follow_up(ctx: TurnContext) -> list[dict]:
    """A ticket about an order, once the orders are known."""
    if "ticket" not in ctx.prompt.lower() or "create_ticket" not in ctx.tool_names:
        return []
    if any(o["tool"] == "create_ticket" for o in ctx.outcomes):
        return []
    orders = [o for o in ctx.outcomes if o["tool"] == "my_orders" and o.get("status") == "ok"]
    if not orders or not orders[-1]["result"].get("orders"):
        return []
    latest = max(orders[-1]["result"]["orders"], key=lambda order: order.get("placed", ""))
    return [{"tool": "create_ticket", "args": {"subject": f"Problem with order {latest['order_id']}",
                                                "body": ctx.prompt}}]


def describe(outcome: dict) -> str:
    tool, result = outcome["tool"], outcome.get("result")
    if outcome.get("status") != "ok":
        return f"I could not use {tool}: {outcome.get('error', 'it failed')}."
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
    if tool == "my_orders":
        orders = result.get("orders", [])
        if not orders:
            return "You have no orders."
        listed = ", ".join(f"{o['order_id']} {o['item']} ({o['status']})" for o in orders)
        return f"You have {len(orders)} order{'s' if len(orders) != 1 else ''}: {listed}."
    if tool == "sales_report":
        return (f"Your sales report: {result['orders']} orders worth {result['total_eur']} EUR "
                f"({', '.join(f'{n} {status}' for status, n in sorted(result['by_status'].items()))}).")
    if tool == "create_ticket":
        return f"I opened ticket {result['ticket_id']}: {result['subject']}."
    return f"{tool} returned {result}."


class RulesReasoner(Reasoner):
    name = "rules"

    def decide(self, ctx: TurnContext) -> list[dict]:
        return _follow_up(ctx) if ctx.rounds else _first_round(ctx)

    def answer(self, ctx: TurnContext, emit: Emit) -> str:
        outcomes = ctx.outcomes
        text = " ".join(describe(o) for o in outcomes) if outcomes else "I have no tool that can help with that."
        words = text.split(" ")
        for i, word in enumerate(words):
            emit(word if i == len(words) - 1 else word + " ")
        return text
