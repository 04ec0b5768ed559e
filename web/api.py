"""The JSON API: post a prompt, read a turn's status and events, list sessions.

Posting answers at once (202): the turn runs as a Celery chain and the client follows
it on `stream_url` (SSE) or by polling `events`."""

import uuid

from flask import Blueprint, current_app, jsonify, request, url_for
from pydantic import BaseModel, ConfigDict, Field

from shared import turns
from shared.celery_config import turn_chain
from shared.keys import valid_id
from shared.progress import read_log, valid_stream_id
from shared.settings import get_settings
from shared.tokens import Principal, issue_stream_token, issue_user_token
from web.auth import current_principal
from web.errors import ApiError

api = Blueprint("api", __name__, url_prefix="/api")


class PromptBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)


class DevTokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = "demo"
    tenant: str = "demo"
    roles: list[str] = ["analyst"]


def json_body(model: type[BaseModel]) -> BaseModel:
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the body as JSON (Content-Type: application/json)")
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return model.model_validate(payload)


def owned_turn(session_id: str, message_id: str, principal: Principal) -> dict:
    """The turn's record, or 404 whether it is missing or someone else's (existence is not revealed)."""
    valid_id(session_id, "session_id")
    valid_id(message_id, "message_id")
    record = turns.get_turn(session_id, message_id)
    if not record or record.get("owner") != principal.owner:
        raise ApiError(404, "not_found", "no such turn")
    return record


def public_turn(record: dict) -> dict:
    fields = ("session_id", "message_id", "status", "step", "prompt", "answer", "error", "created_at", "updated_at")
    return {name: record[name] for name in fields if name in record}


@api.post("/sessions/<session_id>/messages")
def post_message(session_id: str):
    principal = current_principal()
    valid_id(session_id, "session_id")
    body = json_body(PromptBody)
    limit = get_settings().prompt_max_chars
    if len(body.prompt) > limit:
        raise ApiError(413, "prompt_too_long", f"prompt is {len(body.prompt)} characters; the limit is {limit}")
    if not turns.claim_session(session_id, principal):
        raise ApiError(404, "not_found", "no such session")

    message_id = uuid.uuid4().hex
    turns.create_turn(session_id, message_id, principal, body.prompt)
    turn = {"session_id": session_id, "message_id": message_id, "prompt": body.prompt,
            "user": principal.user, "tenant": principal.tenant, "roles": list(principal.roles)}
    turn_chain(current_app.extensions["celery"], turn).apply_async()

    stream_token = issue_stream_token(principal, session_id, message_id)
    response = jsonify({
        "session_id": session_id,
        "message_id": message_id,
        "stream_url": url_for("stream.stream", session_id=session_id, message_id=message_id, token=stream_token),
        "status_url": url_for("api.get_message", session_id=session_id, message_id=message_id),
    })
    response.status_code = 202
    return response


@api.get("/sessions/<session_id>/messages/<message_id>")
def get_message(session_id: str, message_id: str):
    return jsonify(public_turn(owned_turn(session_id, message_id, current_principal())))


@api.get("/sessions/<session_id>/messages/<message_id>/events")
def get_events(session_id: str, message_id: str):
    """Polling fallback for clients without SSE: the same events, from the same log."""
    record = owned_turn(session_id, message_id, current_principal())
    after = request.args.get("after")
    if after and not valid_stream_id(after):
        raise ApiError(400, "invalid_after", "after must be an event id such as 1700000000000-0")
    events = [event.as_json() for event in read_log(session_id, message_id, after=after)]
    return jsonify({"status": record.get("status"), "events": events,
                    "last_event_id": events[-1]["id"] if events else after})


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
    return jsonify({"session_id": session_id,
                    "messages": [with_stream_url(public_turn(r), principal) for r in records if r]})


def with_stream_url(turn: dict, principal: Principal) -> dict:
    """An unfinished turn carries a fresh stream URL, so a reloaded page follows it live."""
    if turn.get("status") in turns.FINAL_STATES:
        return turn
    token = issue_stream_token(principal, turn["session_id"], turn["message_id"])
    return {**turn, "stream_url": url_for("stream.stream", session_id=turn["session_id"],
                                          message_id=turn["message_id"], token=token)}


@api.post("/dev/token")
def dev_token():
    """Dev mode only: mint a demo user's token so the page works without a CLI."""
    if not get_settings().dev:
        raise ApiError(404, "not_found", "dev tokens are only available in dev mode (TURNSTREAM_DEV=1)")
    body = json_body(DevTokenBody) if request.content_length else DevTokenBody()
    return jsonify({"token": issue_user_token(body.user, body.tenant, body.roles), "user": body.user,
                    "tenant": body.tenant, "roles": body.roles})
