"""Chat messages for model reasoners (openai and local): short, since small models read them too."""

import json

from workers.reasoners.base import TurnContext

SYSTEM = ("You are a helpful assistant inside a support app. Use a tool when it can answer the question; "
          "otherwise answer directly. Be brief and only state facts from tool results.")
ANSWER = "Answer the user's last message in one to three sentences, using the tool results above."


def tool_functions(ctx: TurnContext) -> list[dict]:
    """The offered tools in the chat-completions `tools` format."""
    return [{"type": "function", "function": {"name": t["name"], "description": t["description"][:300],
                                              "parameters": t["input_schema"]}} for t in ctx.tools]


def call_id(outcome: dict) -> str:
    return outcome.get("model_call_id") or outcome.get("call_id") or "call"


def messages(ctx: TurnContext, final: bool = False) -> list[dict]:
    """System, earlier turns, the prompt, then each tool round as assistant tool_calls + tool results."""
    out: list[dict] = [{"role": "system", "content": SYSTEM}]
    for past in ctx.history:
        out += [{"role": "user", "content": past["prompt"]}, {"role": "assistant", "content": past["answer"]}]
    out.append({"role": "user", "content": ctx.prompt})
    for round_ in ctx.rounds:
        # "" rather than null: llama-cpp-python's server rejects a null content (OpenAI takes either)
        out.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": call_id(o), "type": "function",
             "function": {"name": o["tool"], "arguments": json.dumps(o.get("args", {}))}} for o in round_]})
        out += [{"role": "tool", "tool_call_id": call_id(o), "content": ctx.result_text(o)} for o in round_]
    if final:
        out.append({"role": "system", "content": ANSWER})
    return out


def parse_arguments(name: str, raw: str) -> tuple[dict, str | None]:
    """A tool call's JSON arguments, or ({}, an error the execute step reports as the call's result)."""
    try:
        args = json.loads(raw or "{}")
    except ValueError as exc:
        return {}, f"the model sent invalid JSON arguments for {name}: {exc}"
    if not isinstance(args, dict):
        return {}, f"the model sent arguments for {name} that are not a JSON object"
    return args, None
