"""The history the page loads: an unfinished turn carries a fresh stream URL so a reloaded page
follows it live; a finished one does not need one."""

import uuid

import httpx

from shared import turns
from shared.identity import Principal
from tests.sse import bearer, post_prompt, read_stream


def test_only_unfinished_turns_in_the_history_carry_a_stream_url(base_url, session_id):
    finished = post_prompt(base_url, session_id, "calculate 2 + 2").json()
    read_stream(base_url, finished["stream_url"])
    running_id = uuid.uuid4().hex
    turns.create_turn(session_id, running_id, Principal("alice", "acme", ("analyst",)), "still going")

    listing = httpx.get(f"{base_url}/api/sessions/{session_id}/messages", headers=bearer()).json()
    by_id = {m["message_id"]: m for m in listing["messages"]}
    assert "stream_url" not in by_id[finished["message_id"]]
    stream_url = by_id[running_id]["stream_url"]
    assert stream_url.startswith(f"/stream/{session_id}/{running_id}?token=")
    with httpx.stream("GET", base_url + stream_url, timeout=5) as response:
        assert response.status_code == 200, "the listed URL opens the turn's stream"
        assert response.headers["content-type"].startswith("text/event-stream")

    other = httpx.get(f"{base_url}/api/sessions/{session_id}/messages", headers=bearer("mallory"))
    assert other.status_code == 404, "another user gets no stream URL"
