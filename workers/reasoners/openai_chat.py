"""The `openai` reasoner: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama,
llama-cpp-python's server) through the official `openai` SDK.

Rules:
- `decide` asks without streaming: tools are offered as functions and the tool calls are read
  from the one finished message. `answer` is a second call, without tools, streamed token by
  token to the user.
- A reply counts only once it is finished. A streamed answer must end with a `finish_reason`:
  an empty 200 stream, or one cut off before its last chunk, is an error, never an empty or
  partial answer. A non-streamed reply, whole by construction, must carry a message.
- One deadline per model call, TURNSTREAM_REASONER_TIMEOUT_S, held by the clock: the SDK's
  retries are off (each retry would start a fresh timeout, doubling the wait), and the HTTP
  transport (`deadline.py`) ends the call at the deadline even while the server keeps
  sending keep-alive comments.
- Every failure is a ReasonerError whose text is one clause naming the server and what it did:
  "the model server at http://…/v1 answered HTTP 500", "… did not answer within 5 s".

Why `decide` does not stream: a tool call cannot be acted on before its message is complete,
so streaming it shows the user nothing sooner. And servers differ there: llama-cpp-python's
server refuses streamed automatic tool choice, yet answers 200 with an empty body, which is
indistinguishable from a broken stream. Rejected: stream first and, on an empty stream, ask
again without streaming, remembering per process that the server refuses. That costs a wasted
request per process, and it must guess whether an empty stream meant "refused" or "broken";
the same server behind a load balancer may even answer both ways."""

import json

import httpx2
import openai

from shared.settings import Settings
from workers.reasoners import prompting
from workers.reasoners.base import Emit, Reasoner, ReasonerError, TurnContext
from workers.reasoners.deadline import DeadlineTransport

# What a model call can raise: the SDK's errors, and a body that is not JSON (not `ValueError`,
# which would also catch whatever the `emit` callback raises)
FAILURES = (openai.APIError, httpx2.HTTPError, json.JSONDecodeError)


class OpenAIReasoner(Reasoner):
    name = "openai"

    def __init__(self, settings: Settings):
        self.model = settings.openai_model
        self.timeout = settings.reasoner_timeout_s
        self.server = f"the model server at {settings.openai_base_url.rstrip('/')}"
        self.client = openai.OpenAI(base_url=settings.openai_base_url,
                                    api_key=settings.openai_api_key.get_secret_value() or "not-needed",
                                    max_retries=0,
                                    http_client=openai.DefaultHttpxClient(transport=DeadlineTransport()))

    def _create(self, **request):
        """One model call, with the whole deadline as its timeout (see deadline.py)."""
        return self.client.chat.completions.create(model=self.model, timeout=httpx2.Timeout(self.timeout),
                                                   **request)

    def _failure(self, exc: Exception, answering: bool = False) -> ReasonerError:
        """The SDK's exception as one readable clause; `answering`: part of the answer had streamed."""
        if isinstance(exc, (openai.APITimeoutError, httpx2.TimeoutException)):
            what = "did not finish its answer" if answering else "did not answer"
            return ReasonerError(f"{self.server} {what} within {self.timeout:g} s")
        if isinstance(exc, openai.APIStatusError):
            return ReasonerError(f"{self.server} answered HTTP {exc.status_code}{_detail(exc)}")
        if isinstance(exc, (openai.APIConnectionError, httpx2.TransportError)):
            return ReasonerError(f"{self.server} could not be reached ({_reason(exc)})")
        return ReasonerError(f"{self.server} sent a reply that is not a chat completion")

    def decide(self, ctx: TurnContext) -> list[dict]:
        if not ctx.tools:
            return []
        try:
            reply = self._create(messages=prompting.messages(ctx), tools=prompting.tool_functions(ctx),
                                 tool_choice="auto")
        except FAILURES as exc:
            raise self._failure(exc) from exc
        choices = getattr(reply, "choices", None)  # a server answering HTML gets back a str here
        if not choices or getattr(choices[0], "message", None) is None:
            raise ReasonerError(f"{self.server} sent a reply that is not a chat completion")
        return [_call(index, tool_call) for index, tool_call in enumerate(choices[0].message.tool_calls or [])]

    def answer(self, ctx: TurnContext, emit: Emit) -> str:
        parts: list[str] = []
        finished = False
        try:
            with self._create(messages=prompting.messages(ctx, final=True), stream=True) as stream:
                for chunk in stream:
                    for choice in chunk.choices:
                        if choice.delta and choice.delta.content:
                            parts.append(choice.delta.content)
                            emit(choice.delta.content)
                        finished = finished or bool(choice.finish_reason)
        except FAILURES as exc:
            raise self._failure(exc, answering=bool(parts)) from exc
        if not finished:
            what = "an empty answer stream" if not parts else "an answer stream that stopped before it finished"
            raise ReasonerError(f"{self.server} sent {what}")
        text = "".join(parts).strip()
        if not text:
            raise ReasonerError(f"{self.server} answered with no text")
        return text


def _call(index: int, tool_call) -> dict:
    """One tool call of the reply; arguments that are not a JSON object become the call's error."""
    function = getattr(tool_call, "function", None)  # None for a non-function ("custom") tool call
    name = function.name if function else ""
    args, error = prompting.parse_arguments(name, function.arguments if function else "")
    call = {"tool": name, "args": args, "model_call_id": tool_call.id or f"call_{index}"}
    if error:
        call["error"] = error
    return call


def _detail(exc: openai.APIStatusError) -> str:
    """The first line of the server's own error message, when it sent one as JSON (e.g. an unknown model)."""
    message = exc.body.get("message") if isinstance(exc.body, dict) else None
    if not isinstance(message, str) or not message.strip():
        return ""
    return ": " + message.strip().splitlines()[0][:200].rstrip(":")


def _reason(exc: BaseException) -> str:
    """The innermost cause's own words, e.g. "connection refused" from "[Errno 111] Connection refused"."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc).strip() or "no details"
