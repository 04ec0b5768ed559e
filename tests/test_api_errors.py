"""Bad input and bad credentials get a clear JSON 4xx, never a 500, and build no key."""

import httpx
import pytest

from tests.sse import bearer, post_prompt


def test_invalid_session_id_is_a_400_and_builds_no_key(stack, base_url):
    hostile = "bad*id:x"
    response = post_prompt(base_url, hostile.replace(":", "%3A"), "hello")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_id"
    assert "session_id" in response.json()["message"]
    for store in ("broker", "progress", "exec_cache", "auth_memo"):
        assert not stack.client(store).keys("*bad[*]id*"), f"a key was built on the {store} server"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic abc"}])
def test_missing_or_bad_token_is_a_401(base_url, session_id, headers):
    response = httpx.post(f"{base_url}/api/sessions/{session_id}/messages", json={"prompt": "hi"}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


def test_a_token_signed_with_another_secret_is_a_401(base_url, session_id):
    import jwt
    forged = jwt.encode({"sub": "alice", "tenant": "acme", "aud": "turnstream-api", "exp": 4102444800},
                        "some-other-secret-that-is-long-enough!!", algorithm="HS256")
    response = post_prompt(base_url, session_id, "hi", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401


def test_body_must_be_a_json_object_with_known_fields(base_url, session_id):
    url = f"{base_url}/api/sessions/{session_id}/messages"
    as_text = httpx.post(url, content="prompt=hi", headers={**bearer(), "Content-Type": "text/plain"})
    assert as_text.status_code == 415
    extra = httpx.post(url, json={"prompt": "hi", "model": "x"}, headers=bearer())
    assert extra.status_code == 400 and "model" in extra.json()["message"]
    empty = httpx.post(url, json={"prompt": ""}, headers=bearer())
    assert empty.status_code == 400 and "prompt" in empty.json()["message"]
    not_object = httpx.post(url, json=["hi"], headers=bearer())
    assert not_object.status_code == 400


def test_an_overlong_prompt_is_a_413(base_url, session_id):
    response = post_prompt(base_url, session_id, "x" * 4001)
    assert response.status_code == 413
    assert response.json()["error"] == "prompt_too_long"


def test_another_users_session_and_turn_are_not_found(base_url, session_id):
    body = post_prompt(base_url, session_id, "hello").json()
    mallory = bearer("mallory", "acme")
    assert post_prompt(base_url, session_id, "mine now", headers=mallory).status_code == 404
    assert httpx.get(base_url + body["status_url"], headers=mallory).status_code == 404
    assert httpx.get(f"{base_url}/api/sessions/{session_id}/messages", headers=mallory).status_code == 404
    assert httpx.get(f"{base_url}/api/sessions/{session_id}/messages/nosuch", headers=bearer()).status_code == 404


def test_stream_needs_the_turns_own_token(stack, base_url, session_id):
    body = post_prompt(base_url, session_id, "hello").json()
    other = post_prompt(base_url, session_id, "another turn").json()
    other_token = other["stream_url"].split("token=")[1]
    path = body["stream_url"].split("?")[0]
    subscribers_before = stack.client("progress").pubsub_numsub(f"agent:progress:{{{session_id}:{body['message_id']}}}")
    assert httpx.get(f"{base_url}{path}").status_code == 401
    assert httpx.get(f"{base_url}{path}?token={other_token}").status_code == 403
    assert httpx.get(f"{base_url}{path}?token=garbage").status_code == 403
    assert stack.client("progress").pubsub_numsub(f"agent:progress:{{{session_id}:{body['message_id']}}}") \
        == subscribers_before
    assert other_token not in stack.log("web"), "stream tokens stay out of the access log"


def test_unknown_route_is_a_json_404(base_url):
    response = httpx.get(f"{base_url}/api/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
