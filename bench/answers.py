"""Answer correctness: does each reasoner's answer carry the tool's facts?

Every case in answers.jsonl is a conversation (a prompt and its follow-ups) and the facts its
last answer must state (a number, an id, a phrase). Each reasoner runs every case the way the
agent loop does (workers/tasks.py): decide -> call the tools -> up to TURNSTREAM_MAX_TOOL_ROUNDS
rounds -> answer, with the earlier turns of the case as history. The tools are real calls to
the built-in MCP tool server over stdio, as the demo user (tenant `demo`, role `analyst`, so the
analyst's tools are offered). Celery, Redis and SSE are left out: they move the answer, they do
not change it, and the turn tests cover them.

Reasoners: `rules`, `local` (the shipped GGUF), and `openai` against llama-cpp-python's own
OpenAI-compatible server (`python -m llama_cpp.server --chat_format chatml-function-calling`,
started here on a free port with the same GGUF).

    .venv/bin/python bench/answers.py                       # all three
    .venv/bin/python bench/answers.py --reasoners rules,local --verbose
"""

import argparse
import json
import re
import sys
import time
import tomllib
from pathlib import Path

from _common import REPO_ROOT  # also puts the repository on sys.path

CASES = Path(__file__).with_name("answers.jsonl")
CALLER = {"user": "demo", "tenant": "demo", "roles": ["analyst"]}


def has_fact(answer: str, fact: str) -> bool:
    """A number must appear as a whole number (9 is not in 19); anything else, without case."""
    if re.fullmatch(r"[\d.]+", fact):
        return re.search(rf"(?<![\d.]){re.escape(fact)}(?![\d]|\.\d)", answer) is not None
    return fact.lower() in answer.lower()


def offered_tools(hub) -> list[dict]:
    policy = tomllib.loads((REPO_ROOT / "shared/guards/data/auth-policy.toml").read_text())
    allowed = set(policy["tenants"]["*"]["roles"]["analyst"])
    return [t for t in hub.list_tools() if t["name"] in allowed]


def run_turn(reasoner, hub, tools: list[dict], prompt: str, history: list[dict], max_rounds: int) -> dict:
    from workers.mcp.client import ToolCallError
    from workers.reasoners import TurnContext

    ctx = TurnContext(prompt=prompt, history=list(history), tools=tools)
    for _ in range(max_rounds):
        calls = reasoner.decide(ctx)
        if not calls:
            break
        outcomes = []
        for i, call in enumerate(calls):
            outcome = {**call, "call_id": f"c{len(ctx.rounds)}-{i}"}
            if call.get("error"):
                outcome.update(status="error")
            else:
                try:
                    outcome.update(status="ok", result=hub.call_tool(call["tool"], call["args"], CALLER))
                except ToolCallError as exc:
                    outcome.update(status="error", error=str(exc))
            outcomes.append(outcome)
        ctx.rounds.append(outcomes)
    answer = reasoner.answer(ctx, lambda piece: None)
    used = sorted({o["tool"] for o in ctx.outcomes if o.get("status") == "ok"})
    return {"prompt": prompt, "answer": answer, "tools": used,
            "calls": [(o["tool"], o.get("args")) for o in ctx.outcomes]}


def evaluate(name: str, reasoner, hub, cases: list[dict], max_rounds: int, verbose: bool) -> tuple[int, float]:
    correct, started, tools = 0, time.monotonic(), offered_tools(hub)
    for case in cases:
        history: list[dict] = []
        try:
            for prompt in case["prompts"]:
                turn = run_turn(reasoner, hub, tools, prompt, history, max_rounds)
                history.append({"prompt": turn["prompt"], "answer": turn["answer"], "tools": turn["tools"]})
            answer, calls, error = history[-1]["answer"], turn["calls"], None
        except Exception as exc:  # a failed turn is a wrong answer; the bench goes on
            answer, calls, error = "", [], f"{type(exc).__name__}: {exc}"
        ok = error is None and all(has_fact(answer, fact) for fact in case["facts"])
        correct += ok
        if verbose or not ok:
            mark = "ok  " if ok else "MISS"
            print(f"  {mark} {' / '.join(case['prompts'])!r} -> {calls} {error or answer!r}"[:400], flush=True)
    per_turn = (time.monotonic() - started) / sum(len(c["prompts"]) for c in cases)
    print(f"{name:<8} {correct}/{len(cases)} correct ({100 * correct / len(cases):.0f}%), "
          f"{per_turn:.2f} s per turn", flush=True)
    return correct, per_turn


def start_llama_server(model: Path, log_dir: Path):
    """llama-cpp-python's own OpenAI-compatible server on a free port; (executor, base URL)."""
    from mirakuru import HTTPExecutor

    from shared.cli import processes

    port = processes.free_port()
    server = HTTPExecutor([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(port),
                           "--host", "127.0.0.1", "--chat_format", "chatml-function-calling", "--n_ctx", "4096"],
                          url=f"http://127.0.0.1:{port}/v1/models", method="GET", timeout=120,
                          stdout=open(log_dir / "llama-server.log", "ab"), stderr=-2)
    return server.start(), f"http://127.0.0.1:{port}/v1"


def build(kind: str, settings, log_dir: Path, started: list):
    if kind == "rules":
        from workers.reasoners.rules import RulesReasoner
        return RulesReasoner()
    if kind == "local":
        from workers.reasoners.local import LocalReasoner
        return LocalReasoner(settings)
    from workers.reasoners.local import shipped_model_path
    from workers.reasoners.openai_chat import OpenAIReasoner
    server, url = start_llama_server(Path(settings.local_model_path or shipped_model_path()), log_dir)
    started.append(server)
    return OpenAIReasoner(settings.model_copy(update={"openai_base_url": url, "openai_model": "local"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reasoners", default="rules,local,openai")
    parser.add_argument("--limit", type=int, default=0, help="only the first N cases")
    parser.add_argument("--verbose", action="store_true", help="print every answer, not only the misses")
    options = parser.parse_args()

    import os
    import tempfile

    os.environ["TURNSTREAM_TOOL_LATENCY_MS"] = "0"
    from shared.settings import get_settings
    from workers.mcp.client import McpClient

    settings = get_settings()
    cases = [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]
    cases = cases[: options.limit] if options.limit else cases
    log_dir = Path(tempfile.mkdtemp(prefix="bench-answers-"))
    hub, started = McpClient(settings), []
    print(f"{len(cases)} cases, {sum(len(c['prompts']) for c in cases)} turns; logs in {log_dir}", flush=True)
    try:
        for kind in options.reasoners.split(","):
            evaluate(kind, build(kind, settings, log_dir, started), hub, cases, settings.max_tool_rounds,
                     options.verbose)
    finally:
        hub.close()
        for server in started:
            server.stop()


if __name__ == "__main__":
    main()
