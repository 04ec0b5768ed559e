"""Reading a turn the way a client does: HTTP with a bearer token, SSE with httpx-sse."""

import json
from dataclasses import dataclass

import httpx
from httpx_sse import connect_sse

from shared.identity import issue_user_token
from shared.vocabulary import TERMINAL_EVENTS, TOOL_FINAL_STATUSES


@dataclass
class Event:
    type: str
    id: str
    data: dict


def tool_calls(events: list[Event]) -> list[Event]:
    """Each tool call's final event (`ok`, `error`, `denied`), without its `started` and `running` ones."""
    return [e for e in events if e.type == "tool" and e.data["status"] in TOOL_FINAL_STATUSES]


def bearer(user: str = "alice", tenant: str = "acme", roles: tuple[str, ...] = ("analyst",)) -> dict:
    return {"Authorization": f"Bearer {issue_user_token(user, tenant, list(roles))}"}


def read_stream(base_url: str, stream_url: str, last_event_id: str | None = None, timeout: float = 30.0,
                limit: int | None = None, client: httpx.Client | None = None) -> list[Event]:
    """Events from `stream_url` until a terminal event, the server closing, or `limit` events."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[Event] = []
    owned = client is None
    client = client or httpx.Client(timeout=timeout)
    try:
        with connect_sse(client, "GET", base_url + stream_url, headers=headers) as source:
            source.response.raise_for_status()
            for sse in source.iter_sse():
                if not sse.data:
                    continue  # the retry hint / comments carry no event
                events.append(Event(sse.event, sse.id, json.loads(sse.data)))
                if sse.event in TERMINAL_EVENTS or (limit and len(events) >= limit):
                    break
    finally:
        if owned:
            client.close()
    return events


def post_prompt(base_url: str, session_id: str, prompt: str, headers: dict | None = None,
                client: httpx.Client | None = None) -> httpx.Response:
    return (client or httpx).post(f"{base_url}/api/sessions/{session_id}/messages", json={"prompt": prompt},
                                  headers=headers or bearer(), timeout=30)
