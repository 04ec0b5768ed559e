"""Who may do what: sessions belong to their user, ids and bodies are checked, turn creation
is rate-limited per user, the OpenAPI spec is served, CORS follows its allow-list."""

import httpx
import pytest

from shared.cli import processes
from tests.sse import bearer, post_prompt, read_stream


def test_another_user_cannot_read_cancel_or_stream_a_turn(base_url, session_id):
    body = post_prompt(base_url, session_id, "What is the weather in Berlin?").json()
    read_stream(base_url, body["stream_url"])
    mallory = bearer("mallory", "evilcorp")
    turn_url = base_url + body["status_url"]
    missing_url = f"{base_url}/api/sessions/{session_id}/messages/nosuchturn"
    for url in (turn_url, turn_url + "/events", f"{base_url}/api/sessions/{session_id}/messages"):
        response = httpx.get(url, headers=mallory)
        assert response.status_code == 404 and response.json()["error"] == "not_found", url
    # The same answer as for a turn that does not exist: nothing reveals that it does.
    assert httpx.delete(turn_url, headers=mallory).json() == httpx.delete(missing_url, headers=mallory).json()
    assert session_id not in httpx.get(f"{base_url}/api/sessions", headers=mallory).json()["sessions"]
    # A stream token is bound to its turn; another turn's token does not open this stream.
    other = post_prompt(base_url, "m" + session_id, "hi", headers=mallory).json()
    path = body["stream_url"].split("?")[0]
    assert httpx.get(f"{base_url}{path}?token={other['stream_url'].split('token=')[1]}").status_code == 403
    assert httpx.get(turn_url, headers=bearer()).json()["status"] == "done"


def test_a_finished_turn_cannot_be_cancelled(base_url, session_id):
    body = post_prompt(base_url, session_id, "calculate 2 + 2").json()
    read_stream(base_url, body["stream_url"])
    response = httpx.delete(base_url + body["status_url"], headers=bearer())
    assert response.status_code == 409
    assert response.json()["error"] == "already_finished"
    assert httpx.get(base_url + body["status_url"], headers=bearer()).json()["answer"] == "2 + 2 = 4."


@pytest.mark.parametrize("method,path", [("GET", "/api/sessions"), ("DELETE", "/api/sessions/s1/messages/m1"),
                                         ("GET", "/api/sessions/s1/messages/m1/events")])
def test_every_api_call_needs_a_token(base_url, method, path):
    response = httpx.request(method, base_url + path)
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"


def test_bad_ids_and_parameters_are_json_400s(base_url):
    assert httpx.delete(f"{base_url}/api/sessions/s1/messages/bad.id", headers=bearer()).status_code == 400
    response = httpx.get(f"{base_url}/api/sessions/s1/messages/m1/events?after=drop-table", headers=bearer())
    assert response.status_code in (400, 404) and response.headers["content-type"] == "application/json"
    wrong_method = httpx.put(f"{base_url}/api/sessions/s1/messages", headers=bearer())
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "method_not_allowed"


def test_the_openapi_spec_describes_the_api(base_url):
    spec = httpx.get(f"{base_url}/api/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    post = spec["paths"]["/api/sessions/{session_id}/messages"]["post"]
    assert {"202", "413", "415", "429", "503"} <= set(post["responses"])
    prompt = spec["components"]["schemas"]["PromptBody"]
    assert prompt["additionalProperties"] is False and prompt["properties"]["prompt"]["maxLength"] == 4000
    assert post["parameters"][0]["schema"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
    assert "delete" in spec["paths"]["/api/sessions/{session_id}/messages/{message_id}"]


def test_without_an_allow_list_no_cors_headers_are_sent(base_url):
    response = httpx.options(f"{base_url}/api/sessions", headers={
        "Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in response.headers


@pytest.fixture(scope="module")
def strict_web(stack, tmp_path_factory):
    """A second web process on the same stores: 3 turns a minute per user, one allowed origin."""
    env = {**stack.env, "TURNSTREAM_TURN_RATE_LIMIT": "3/minute", "TURNSTREAM_CORS_ORIGINS": "https://app.example"}
    port = processes.free_port()
    web = processes.web_server(env, port, tmp_path_factory.mktemp("strict-web")).start()
    yield f"http://127.0.0.1:{port}"
    web.stop()


def test_turn_creation_is_rate_limited_per_user(strict_web, session_id):
    user = bearer("ratey", "acme")
    statuses = [post_prompt(strict_web, session_id, f"calculate {i} + 1", headers=user).status_code for i in range(3)]
    assert statuses == [202, 202, 202]
    limited = post_prompt(strict_web, session_id, "one more", headers=user)
    assert limited.status_code == 429
    assert limited.json()["error"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert post_prompt(strict_web, "x" + session_id, "calculate 1 + 1", headers=bearer("other", "acme")).status_code == 202


def test_cors_answers_only_allowed_origins(strict_web):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = httpx.options(f"{strict_web}/api/sessions/s1/messages", headers={"Origin": "https://app.example", **preflight})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    denied = httpx.options(f"{strict_web}/api/sessions/s1/messages", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in denied.headers
