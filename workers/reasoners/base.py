"""What every reasoner gets and gives: the turn so far in, tool calls or a streamed answer out."""

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable


class ReasonerError(RuntimeError):
    """The reasoner failed or timed out; the message says which reasoner and what happened."""


@dataclass
class TurnContext:
    """The turn as a reasoner sees it: prompt, earlier turns, allowed tools, tool rounds so far."""

    prompt: str
    history: list[dict] = field(default_factory=list)  # [{"prompt", "answer", "tools"}], oldest first
    tools: list[dict] = field(default_factory=list)  # catalogue specs: name, description, input_schema
    rounds: list[list[dict]] = field(default_factory=list)  # per round: outcomes of its tool calls
    result_chars: int = 2000

    @classmethod
    def from_turn(cls, turn: dict, result_chars: int = 2000) -> "TurnContext":
        return cls(prompt=turn["prompt"], history=turn.get("history", []), tools=turn.get("tools", []),
                   rounds=[r["results"] for r in turn.get("rounds", [])], result_chars=result_chars)

    @property
    def tool_names(self) -> set[str]:
        return {t["name"] for t in self.tools}

    @property
    def outcomes(self) -> list[dict]:
        return [outcome for round_ in self.rounds for outcome in round_]

    def result_text(self, outcome: dict) -> str:
        """One tool outcome as the model reads it, cut to `result_chars`."""
        if outcome.get("status") != "ok":
            return json.dumps({"error": outcome.get("error", "failed")})[: self.result_chars]
        return json.dumps(outcome.get("result"), ensure_ascii=False)[: self.result_chars]


Emit = Callable[[str], None]


class Reasoner(ABC):
    name: str

    @abstractmethod
    def decide(self, ctx: TurnContext) -> list[dict]:
        """The next tool calls, each {"tool", "args"} (optionally "call_id", "error"); [] when ready to answer."""

    @abstractmethod
    def answer(self, ctx: TurnContext, emit: Emit) -> str:
        """Write the answer, passing each piece to `emit` as it is produced; return the whole text."""
