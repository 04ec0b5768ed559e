"""The guards in real turns: a real worker, the web app under gunicorn, the stream read over SSE."""

import subprocess
import sys

import httpx

from shared.cli.processes import child_env
from tests.sse import bearer, post_prompt, read_stream, tool_calls


def tool_events(events):
    return [e.data for e in tool_calls(events)]


def test_tool_events_report_permission_cache_and_duration(base_url, session_id):
    prompt = "What is the weather in Sydney? request 8f1c at 12:00:01"
    first = tool_events(read_stream(base_url, post_prompt(base_url, session_id, prompt).json()["stream_url"]))
    again = tool_events(read_stream(base_url, post_prompt(base_url, session_id, prompt).json()["stream_url"]))
    assert [(t["tool"], t["status"]) for t in first] == [("weather", "ok")]
    assert first[0]["permission"]["allowed"] is True and first[0]["permission"]["memo"] in ("hit", "miss")
    assert first[0]["cache"] in ("miss", "hit") and first[0]["duration_ms"] >= 0
    assert again[0]["permission"] == {"allowed": True, "memo": "hit"}
    assert again[0]["cache"] == "hit"
    assert again[0]["result_preview"] == first[0]["result_preview"]


def test_a_tool_the_user_may_not_call_is_never_offered_nor_run(stack, base_url, session_id):
    """discover's preflight hides weather from a viewer, so the reasoner falls back to what is allowed.
    (A model that calls a hidden tool anyway gets a `denied` result: test_openai_reasoner.py.)"""
    viewer = bearer("victor", "acme", ("viewer",))
    body = post_prompt(base_url, session_id, "What is the weather in Madrid?", headers=viewer).json()
    events = read_stream(base_url, body["stream_url"])
    tools = tool_events(events)
    assert [(t["tool"], t["status"]) for t in tools] == [("search_kb", "ok")]
    assert events[-1].type == "done" and "°C" not in events[-1].data["answer"]
    assert stack.client("auth_memo").get("agent:auth:memo:{victor}:acme:weather").startswith("D|")


def test_admin_invalidation_needs_the_admin_role_and_a_clear_body(base_url):
    url = f"{base_url}/admin/auth/invalidate"
    assert httpx.post(url, json={"user": "alice"}).status_code == 401
    forbidden = httpx.post(url, json={"user": "alice"}, headers=bearer("alice", "acme", ("analyst",)))
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
    admin = bearer("root", "acme", ("admin",))
    for bad in ({}, {"user": "alice", "tool": "weather"}, {"everything": True}, {"all": False}):
        response = httpx.post(url, json=bad, headers=admin)
        assert response.status_code == 400, bad
    # The rule about the whole body, in its own words: no empty field name, no "Value error, ".
    assert httpx.post(url, json={}, headers=admin).json()["message"] == "name exactly one of user, tool, tenant or all"
    assert httpx.post(url, json={"user": "a:b*"}, headers=admin).json()["error"] == "invalid_id"
    assert httpx.post(url, content="user=alice", headers=admin).status_code == 415
    ok = httpx.post(url, json={"tool": "weather"}, headers=admin)
    assert ok.status_code == 200 and ok.json()["invalidated"] == {"tool": "weather"}
    assert ok.json()["generation"] >= 1


def test_invalidation_applies_to_the_next_turn(stack, base_url, session_id):
    """discover re-verifies after an invalidation and memoizes under the new generation."""
    memos = stack.client("auth_memo")
    prompt = "calculate 2 + 2"
    read_stream(base_url, post_prompt(base_url, session_id, prompt).json()["stream_url"])
    admin = bearer("root", "acme", ("admin",))
    response = httpx.post(f"{base_url}/admin/auth/invalidate", json={"user": "alice"}, headers=admin)
    generation = response.json()["generation"]
    events = read_stream(base_url, post_prompt(base_url, session_id, prompt).json()["stream_url"])
    assert tool_events(events)[0]["permission"] == {"allowed": True, "memo": "hit"}, "execute re-checks: a hit"
    stamp = memos.get("agent:auth:memo:{alice}:acme:calculator").split("|")[1]
    assert stamp.split(".")[2] == str(generation)

    result = subprocess.run([sys.executable, "-m", "shared.cli", "auth", "invalidate", "--tenant", "acme"],
                            env=child_env(stack.env), check=True, capture_output=True, text=True)
    generation = int(result.stdout.split("generation ")[1].rstrip(")\n"))
    read_stream(base_url, post_prompt(base_url, session_id, prompt).json()["stream_url"])
    stamp = memos.get("agent:auth:memo:{alice}:acme:calculator").split("|")[1]
    assert stamp.split(".")[1] == str(generation)


def test_cli_invalidate_needs_exactly_one_target():
    for args in ([], ["--user", "alice", "--tool", "weather"]):
        result = subprocess.run([sys.executable, "-m", "shared.cli", "auth", "invalidate", *args], env=child_env({}),
                                capture_output=True, text=True)
        assert result.returncode == 2 and "exactly one of user, tool, tenant or all" in result.stderr
