"""The `openai` reasoner: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama,
llama.cpp server) through the official `openai` SDK.

Tools are offered as functions; tool calls are assembled from the streamed deltas (each
carries an index, the first one its id and name, later ones argument fragments). The answer
is a second streamed call without tools, passed on token by token."""

import openai

from shared.settings import Settings
from workers.reasoners import prompting
from workers.reasoners.base import Emit, Reasoner, ReasonerError, TurnContext


class OpenAIReasoner(Reasoner):
    name = "openai"

    def __init__(self, settings: Settings):
        self.model = settings.openai_model
        self.base_url = settings.openai_base_url
        self.timeout = settings.reasoner_timeout_s
        self.client = openai.OpenAI(base_url=settings.openai_base_url,
                                    api_key=settings.openai_api_key.get_secret_value() or "not-needed",
                                    timeout=settings.reasoner_timeout_s, max_retries=1)

    def _stream(self, **request):
        try:
            return self.client.chat.completions.create(model=self.model, stream=True, **request)
        except openai.APITimeoutError as exc:
            raise ReasonerError(f"the openai reasoner timed out after {self.timeout:.0f}s") from exc
        except openai.APIStatusError as exc:
            raise ReasonerError(f"the model server at {self.base_url} answered HTTP {exc.status_code}") from exc
        except openai.APIConnectionError as exc:
            raise ReasonerError(f"the model server at {self.base_url} cannot be reached") from exc
        except openai.APIError as exc:
            raise ReasonerError(f"the openai reasoner failed: {exc}") from exc

    def _chunks(self, stream):
        try:
            yield from stream
        except openai.APITimeoutError as exc:
            raise ReasonerError(f"the openai reasoner timed out after {self.timeout:.0f}s") from exc
        except (openai.APIError, ValueError) as exc:
            raise ReasonerError(f"the openai reasoner's stream broke: {exc}") from exc

    def decide(self, ctx: TurnContext) -> list[dict]:
        if not ctx.tools:
            return []
        stream = self._stream(messages=prompting.messages(ctx), tools=prompting.tool_functions(ctx),
                              tool_choice="auto")
        pending: dict[int, dict] = {}
        for chunk in self._chunks(stream):
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or []:
                    call = pending.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                    call["id"] = delta.id or call["id"]
                    if delta.function is not None:
                        call["name"] += delta.function.name or ""
                        call["arguments"] += delta.function.arguments or ""
        calls = []
        for index in sorted(pending):
            raw = pending[index]
            args, error = prompting.parse_arguments(raw["name"], raw["arguments"])
            call = {"tool": raw["name"], "args": args, "model_call_id": raw["id"] or f"call_{index}"}
            if error:
                call["error"] = error
            calls.append(call)
        return calls

    def answer(self, ctx: TurnContext, emit: Emit) -> str:
        parts: list[str] = []
        for chunk in self._chunks(self._stream(messages=prompting.messages(ctx, final=True))):
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
                    emit(choice.delta.content)
        text = "".join(parts).strip()
        if not text:
            raise ReasonerError("the openai reasoner returned an empty answer")
        return text
