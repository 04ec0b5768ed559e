"""The API's request and response bodies as pydantic models: requests are validated with
them, and the OpenAPI spec (web.openapi) is generated from them."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.defaults import PROMPT_MAX_CHARS
from shared.vocabulary import EventType, TurnStatus


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptBody(Strict):
    # The length limit is checked by the view (a 413, not a 400); the spec still states it.
    prompt: str = Field(min_length=1, json_schema_extra={"maxLength": PROMPT_MAX_CHARS},
                        description="The user's message. Longer than TURNSTREAM_PROMPT_MAX_CHARS is a 413.")


class DevTokenBody(Strict):
    """The dev endpoint mints one fixed identity, never an admin; anything else is a 400."""
    user: Literal["demo"] = "demo"
    tenant: Literal["demo"] = "demo"
    roles: list[Literal["analyst"]] = Field(["analyst"], min_length=1, max_length=1)


class TurnAccepted(Strict):
    session_id: str
    message_id: str
    stream_url: str = Field(description="text/event-stream of the turn; carries a short-lived token for it")
    status_url: str


class Turn(BaseModel):
    session_id: str
    message_id: str
    status: TurnStatus
    step: str | None = None
    prompt: str | None = None
    answer: str | None = None
    error: str | None = None
    created_at: float | None = None
    updated_at: float | None = None
    stream_url: str | None = Field(None, description="in session listings, for a turn still running")


class LoggedEventOut(Strict):
    id: str
    type: EventType
    data: dict[str, Any]


class EventsPage(Strict):
    status: TurnStatus | None
    events: list[LoggedEventOut]
    last_event_id: str | None
    progress_unavailable: bool = Field(False, description="true while the progress store is down: events may lag")


class SessionList(Strict):
    sessions: list[str]


class MessageList(Strict):
    session_id: str
    messages: list[Turn]


class DevToken(Strict):
    token: str
    user: str
    tenant: str
    roles: list[str]


class Error(BaseModel):
    error: str = Field(description="a stable machine-readable code, e.g. invalid_id, rate_limited")
    message: str = Field(description="what went wrong, for a human")
