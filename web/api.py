"""The JSON API: post a prompt, read a turn's status and events, cancel it, list sessions.

Posting answers at once (202): the turn runs as a Celery chain and the client follows
it on `stream_url` (SSE) or by polling `events`, whose first event, `accepted`, is logged
before the answer. A turn is accepted only once it is
enqueued: with the broker down the answer is 503 with Retry-After (web.errors)."""

import json
import logging
import uuid

import redis
from flask import Blueprint, jsonify, request, url_for
from kombu.exceptions import OperationalError
from pydantic import BaseModel
from werkzeug.exceptions import BadRequest

from shared import defaults, metrics, outbox, turns
from shared.identity import Principal, issue_stream_token, issue_user_token
from shared.keys import valid_id
from shared.events import AcceptedEvent
from shared.progress import Publisher, read_log, valid_entry_id
from shared.settings import get_settings
from shared.terminal_event import publish_terminal_event
from shared.turn_flow import TurnPayload, revoke_turn, send_turn
from shared.turns import TurnRecord
from shared.vocabulary import ACCEPTED_DEDUPE, CANCELLED
from web import extensions
from web.auth import current_principal
from web.errors import REFUSED_WRITES, ApiError
from web.schemas import DevTokenBody, PromptBody

api = Blueprint("api", __name__, url_prefix="/api")
log = logging.getLogger(__name__)


def json_body(model: type[BaseModel]) -> BaseModel:
    """The body, validated by `model`. Any body the JSON parser refuses is a 400, whatever the
    reason: bad syntax, bad encoding, numbers too long, or nesting deeper than it recurses."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the body as JSON (Content-Type: application/json)")
    try:
        payload = request.get_json()
        # JSON may escape a lone surrogate ("\ud800"), which no store can encode as UTF-8.
        json.dumps(payload, ensure_ascii=False).encode()
    except (BadRequest, RecursionError, ValueError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON (bad syntax or encoding, "
                       "a lone surrogate, a number too long, or nesting too deep)") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return model.model_validate(payload)


def event_id_param(value: str | None, name: str) -> str | None:
    """An event id from the client (`after`, `Last-Event-ID`), or None; 400 unless it is one."""
    if not value:
        return None
    if not valid_entry_id(value):
        raise ApiError(400, "invalid_after", f"{name} must be an event id such as 1700000000000-0")
    return value


def owned_turn(session_id: str, message_id: str, principal: Principal) -> TurnRecord:
    """The turn's record, or 404 whether it is missing or someone else's (existence is not revealed)."""
    valid_id(session_id, "session_id")
    valid_id(message_id, "message_id")
    record = turns.get_turn(session_id, message_id)
    if not record or record.owner != principal.owner:
        raise ApiError(404, "not_found", "no such turn")
    return record


@api.post("/sessions/<session_id>/messages")
def post_message(session_id: str):
    """Validation and the rate limit come before any write: a refused post claims nothing."""
    principal = current_principal()
    valid_id(session_id, "session_id")
    body = json_body(PromptBody)
    message_id = accept_turn(session_id, principal, body.prompt)
    stream_token = issue_stream_token(principal, session_id, message_id)
    response = jsonify({
        "session_id": session_id,
        "message_id": message_id,
        "stream_url": url_for("stream.stream", session_id=session_id, message_id=message_id, token=stream_token),
        "status_url": url_for("api.get_message", session_id=session_id, message_id=message_id),
    })
    response.status_code = 202
    return response


def accept_turn(session_id: str, principal: Principal, prompt: str, message_id: str | None = None) -> str:
    """Record and enqueue a turn for a validated session id, or raise the 4xx/503 saying why not:
    prompt too long (413), someone else's session (404), rate limit (429), a message id that is
    taken (409: only a client that chose its own id can hit it), broker down (503).
    Every way of starting a turn (our API, AG-UI) goes through here."""
    limit = get_settings().prompt_max_chars
    if len(prompt) > limit:
        raise ApiError(413, "prompt_too_long", f"prompt is {len(prompt)} characters; the limit is {limit}")
    extensions.rate_limiter().hit(principal)
    message_id = message_id or uuid.uuid4().hex
    turn: TurnPayload = {"session_id": session_id, "message_id": message_id, "prompt": prompt,
                         "user": principal.user, "tenant": principal.tenant, "roles": list(principal.roles)}
    outcome = turns.start_turn(session_id, message_id, principal, prompt, payload=turn)
    if outcome == turns.NOT_OWNER:
        raise ApiError(404, "not_found", "no such session")
    if outcome == turns.EXISTS:
        raise ApiError(409, "already_exists", f"message {message_id} already exists in session {session_id}")
    announce(session_id, message_id)
    enqueue(session_id, message_id, turn)
    metrics.TURNS_ACCEPTED.inc()
    log.info("turn accepted", extra={"message_id": message_id})
    return message_id


def announce(session_id: str, message_id: str) -> None:
    """Log the turn's `accepted` event before it is enqueued (so no worker's event can precede it)
    and before the 202, so a stream opened on the answer shows the turn at once, however long its
    first step waits for a worker. Progress is a view: with its Redis down the turn goes on."""
    Publisher(session_id, message_id, fail_soft=True).publish(AcceptedEvent(), dedupe=ACCEPTED_DEDUPE)


def enqueue(session_id: str, message_id: str, turn: TurnPayload) -> None:
    """Send the turn's chain, or take the turn back and answer 503: nothing is accepted unqueued."""
    try:
        send_turn(extensions.celery(), turn,
                  retry_policy={"max_retries": defaults.PUBLISH_RETRIES_WEB, "interval_start": 0,
                                "interval_step": 0.2, "interval_max": 0.2})
    except (OperationalError, *REFUSED_WRITES) as exc:
        log.warning("turn %s/%s not enqueued: %s", session_id, message_id, exc)
        try:
            turns.discard_turn(session_id, message_id)
        except redis.RedisError:
            log.warning("turn %s/%s stays recorded as queued but was never sent", session_id, message_id)
        raise


@api.get("/sessions/<session_id>/messages/<message_id>")
def get_message(session_id: str, message_id: str):
    return jsonify(owned_turn(session_id, message_id, current_principal()).public())


@api.delete("/sessions/<session_id>/messages/<message_id>")
def cancel_message(session_id: str, message_id: str):
    """Cancel a queued or running turn: its status becomes `cancelled`, its queued steps are
    revoked, workers skip the steps still to come, and streams end with a `cancelled` event.
    Cancelling a cancelled turn again is a no-op; a finished one is a 409."""
    owned_turn(session_id, message_id, current_principal())
    status = turns.cancel_turn(session_id, message_id)
    if status != CANCELLED:
        raise ApiError(409, "already_finished", f"the turn is already {status}; only a running turn can be cancelled")
    try:
        revoke_turn(extensions.celery(), message_id)
    except OperationalError as exc:
        log.warning("could not revoke %s (workers still skip it by its status): %s", message_id, exc)
    try:
        publish_terminal_event(session_id, message_id, TurnRecord(status=CANCELLED))
    except redis.RedisError as exc:
        log.warning("cancelled event for %s/%s not published yet (%s); streams get it on reconnect",
                    session_id, message_id, exc)
    record = turns.get_turn(session_id, message_id)
    return jsonify(record.public() if record else {})


@api.get("/sessions/<session_id>/messages/<message_id>/events")
def get_events(session_id: str, message_id: str):
    """Polling fallback for clients without SSE: the same events, from the same log.

    With the progress store down this still answers, with the status from the broker and
    `progress_unavailable: true`; a finished turn's outcome is put back into the log."""
    record = owned_turn(session_id, message_id, current_principal())
    after = event_id_param(request.args.get("after"), "after")
    try:
        if not outbox.waiting(session_id, message_id):  # else the outbox publishes it, after the events it holds
            publish_terminal_event(session_id, message_id, record)
        events = [event.as_json() for event in read_log(session_id, message_id, after=after)]
        unavailable = False
    except redis.RedisError as exc:
        log.info("events of %s/%s unavailable: %s", session_id, message_id, exc)
        events, unavailable = [], True
    return jsonify({"status": record.status, "events": events,
                    "last_event_id": events[-1]["id"] if events else after, "progress_unavailable": unavailable})


@api.get("/sessions")
def list_sessions():
    return jsonify({"sessions": turns.user_session_ids(current_principal())})


@api.get("/sessions/<session_id>/messages")
def list_messages(session_id: str):
    principal = current_principal()
    valid_id(session_id, "session_id")
    if not turns.owns_session(session_id, principal):
        raise ApiError(404, "not_found", "no such session")
    records = (turns.get_turn(session_id, mid) for mid in turns.session_message_ids(session_id))
    mine = [r for r in records if r and r.owner == principal.owner]
    return jsonify({"session_id": session_id, "messages": [with_stream_url(r, principal) for r in mine]})


def with_stream_url(record: TurnRecord, principal: Principal) -> dict:
    """An unfinished turn carries a fresh stream URL, so a reloaded page follows it live."""
    if record.final:
        return record.public()
    token = issue_stream_token(principal, record.session_id, record.message_id)
    return {**record.public(), "stream_url": url_for("stream.stream", session_id=record.session_id,
                                                     message_id=record.message_id, token=token)}


@api.post("/dev/token")
def dev_token():
    """Dev mode only: mint the fixed demo identity's token, so the page works without a CLI.

    Anyone who can reach the page gets it, so it is never anyone else and never an admin: any
    other identity comes from `turnstream token`, which needs TURNSTREAM_SECRET itself."""
    if not get_settings().dev:
        raise ApiError(404, "not_found", "dev tokens are only available in dev mode (TURNSTREAM_DEV=1)")
    # The body may only restate the demo identity (DevTokenBody's fields are literals): 400 otherwise.
    demo = json_body(DevTokenBody) if request.content_length else DevTokenBody()
    return jsonify({"token": issue_user_token(demo.user, demo.tenant, demo.roles), "user": demo.user,
                    "tenant": demo.tenant, "roles": demo.roles})
