"""The AG-UI endpoint: any AG-UI frontend (`@ag-ui/client`'s HttpAgent, CopilotKit...) runs turns here.

`POST /api/ag-ui` takes a `RunAgentInput` (parsed with ag-ui-protocol's model) and answers with
the run's AG-UI events over SSE in the same response. It is the same turn as
`POST /api/sessions/{sid}/messages` (threadId is the session, runId the message), started by
the same code (web.api.accept_turn: ownership, rate limit, validation, the same JSON 4xx
before the stream starts), and read from the same event log as our own stream
(web.stream), translated by web.ag_ui_events. `GET /api/ag-ui/{threadId}/{runId}` rejoins a
run: with Last-Event-ID it replays what the client missed, without it the whole run."""

from collections.abc import Iterator

from ag_ui.core import RunAgentInput, UserMessage
from flask import Blueprint, request

from shared import keys, metrics
from shared.keys import valid_id
from shared.progress import LoggedEvent, entry_order
from shared.settings import get_settings
from web.ag_ui_events import RunTranslator, encode
from web.api import accept_turn, event_id_param, json_body, owned_turn
from web.auth import current_principal
from web.errors import ApiError
from web.sse import sse_response
from web.stream import stream as turn_stream

ag_ui = Blueprint("ag_ui", __name__, url_prefix="/api/ag-ui")


@ag_ui.post("")
def run_agent():
    """Start a run (a turn) and stream it."""
    principal = current_principal()
    body = json_body(RunAgentInput)
    valid_id(body.thread_id, "threadId")
    valid_id(body.run_id, "runId")
    accept_turn(body.thread_id, principal, last_user_prompt(body), message_id=body.run_id)
    return run_stream(body.thread_id, body.run_id, after=None)


@ag_ui.get("/<thread_id>/<run_id>")
def rejoin(thread_id: str, run_id: str):
    """Rejoin a run: every event after Last-Event-ID (or all of them), then the live ones."""
    owned_turn(thread_id, run_id, current_principal())
    after = event_id_param(request.headers.get("Last-Event-ID"), "Last-Event-ID")
    return run_stream(thread_id, run_id, after=after)


def last_user_prompt(body: RunAgentInput) -> str:
    """The prompt is the last user message; earlier ones are ignored (the session's history is ours)."""
    for message in reversed(body.messages):
        if isinstance(message, UserMessage):
            content = message.content
            text = content if isinstance(content, str) else "".join(
                getattr(part, "text", "") for part in content)
            if text.strip():
                return text
            break
    raise ApiError(400, "no_prompt", "messages must end with a user message that has text")


def run_stream(thread_id: str, run_id: str, after: str | None):
    channel = keys.progress_channel(thread_id, run_id)
    # Always read the log from its start: the translation is stateful (open steps, the open
    # message), so events before `after` are translated too, just not sent again.
    events = turn_stream.events(channel, thread_id, run_id, None)
    body = _render(events, RunTranslator(thread_id, run_id), after)
    return sse_response(body, get_settings().sse_retry_ms, "run open")


def _render(batches: Iterator[list[LoggedEvent] | None], translator: RunTranslator,
            after: str | None) -> Iterator[str]:
    """AG-UI events, one chunk per batch of the turn stream (web.stream: the replay, then what
    arrives together)."""
    if after is None:
        yield encode([translator.run_started()])
    for batch in batches:
        if batch is None:
            yield ": heartbeat\n\n"
            continue
        chunk = []
        for event in batch:
            translated = translator.translate(event)
            if after and entry_order(event.id) <= entry_order(after):
                continue
            if translated:
                chunk.append(encode(translated, event.id))
        if chunk:
            yield "".join(chunk)
            metrics.SSE_EVENTS_SENT.inc(len(chunk))
