"""The OpenAPI 3.1 document of the JSON API, generated from the pydantic models in web.schemas.

Served at GET /api/openapi.json (no token needed: it describes, it does not expose data).
Paths and ids are listed here once; bodies and responses come from the models, so the spec
cannot drift from what the views validate."""

from flask import Blueprint, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared.keys import ID_PATTERN
from shared.settings import get_settings
from web import schemas

openapi = Blueprint("openapi", __name__)

MODELS: tuple[type[BaseModel], ...] = (
    schemas.PromptBody, schemas.DevTokenBody, schemas.TurnAccepted, schemas.Turn, schemas.EventsPage,
    schemas.SessionList, schemas.MessageList, schemas.DevToken, schemas.Error,
)
ERRORS = {
    400: "invalid id, body or parameter", 401: "missing or invalid bearer token",
    404: "no such session or turn (also: someone else's)", 409: "the turn already finished",
    413: "prompt over the length limit", 415: "body is not JSON",
    429: "this client is over its request limit (or, posting, its user over the new-turn limit); see Retry-After",
    503: "a store is down; see Retry-After",
}


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _id(name: str, where: str = "path") -> dict:
    return {"name": name, "in": where, "required": True,
            "schema": {"type": "string", "pattern": ID_PATTERN.pattern}}


def _operation(summary: str, ok: int, model: type[BaseModel], errors: tuple[int, ...], params: list[dict],
               body: type[BaseModel] | None = None, secured: bool = True) -> dict:
    errors = tuple(sorted({*errors, 429}))  # every request counts against its client (web.request_limit)
    op: dict = {"summary": summary, "parameters": params,
                "responses": {str(ok): _json(model, "OK"), **{str(c): _json(schemas.Error, ERRORS[c]) for c in errors}}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if not secured:
        op["security"] = []
    return op


def build_spec(dev: bool = False, prompt_max_chars: int | None = None) -> dict:
    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template="#/components/schemas/{model}")
    components = defs.get("$defs", {})
    if prompt_max_chars:
        components["PromptBody"]["properties"]["prompt"]["maxLength"] = prompt_max_chars
    sid, mid = _id("session_id"), _id("message_id")
    read = (400, 401, 404, 503)
    paths = {
        "/api/sessions": {"get": _operation("Your sessions, newest first", 200, schemas.SessionList, (401, 503), [])},
        "/api/sessions/{session_id}/messages": {
            "post": _operation("Start a turn", 202, schemas.TurnAccepted, (400, 401, 404, 413, 415, 429, 503),
                               [sid], body=schemas.PromptBody),
            "get": _operation("The session's turns", 200, schemas.MessageList, read, [sid]),
        },
        "/api/sessions/{session_id}/messages/{message_id}": {
            "get": _operation("A turn's status and answer", 200, schemas.Turn, read, [sid, mid]),
            "delete": _operation("Cancel a turn", 200, schemas.Turn, (*read, 409), [sid, mid]),
        },
        "/api/sessions/{session_id}/messages/{message_id}/events": {
            "get": _operation("A turn's events (polling)", 200, schemas.EventsPage, read,
                              [sid, mid, {"name": "after", "in": "query", "required": False,
                                          "schema": {"type": "string", "pattern": r"^\d+-\d+$"}}]),
        },
    }
    if dev:
        paths["/api/dev/token"] = {"post": _operation("Dev mode: a demo token", 200, schemas.DevToken, (400, 415),
                                                      [], body=schemas.DevTokenBody, secured=False)}
    return {
        "openapi": "3.1.0",
        "info": {"title": "turnstream", "version": "0.1.0",
                 "description": "Real-time backend for AI-agent turns. Errors are always JSON {error, message}."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
        "security": [{"bearer": []}],
    }


@openapi.get("/api/openapi.json")
def spec():
    settings = get_settings()
    return jsonify(build_spec(dev=settings.dev, prompt_max_chars=settings.prompt_max_chars))
