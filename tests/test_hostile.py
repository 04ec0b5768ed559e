"""Hostile input and failure edges: session ownership, streams that must end, statuses for bad
input and refusing stores, a runaway tool call, and what the dev endpoint may mint.

The stack here has a 1 s heartbeat (streams re-check their turn at each one) and weather
results that are never cached, so every weather turn really reaches the tool server."""

import json
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import quote

import httpx
import jwt
import pytest
import redis

from shared import defaults, keys, turns
from shared.cli import processes

from shared.identity import API_AUDIENCE, Principal, issue_stream_token
from shared.vocabulary import DONE, TERMINAL_EVENTS
from tests.sse import Event, bearer, post_prompt, read_stream, tool_calls
from tests.stack import TEST_SECRET, Stack

CITIES = ("Paris", "London", "Tokyo", "Berlin", "Rome", "Madrid")
RUNAWAY = "calculate (((9**99)**99)**99)**99"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    base_dir = tmp_path_factory.mktemp("hostile")
    tools_file = base_dir / "tool-cache.toml"
    tools_file.write_text("[global]\nvolatile = []\n")  # no tool is cached
    system = Stack(base_dir, TURNSTREAM_SSE_HEARTBEAT_S="1", TURNSTREAM_EXEC_CACHE_TOOLS_FILE=str(tools_file),
                   TURNSTREAM_BREAKER_RESET_S="1", TURNSTREAM_TOOL_LATENCY_MS="200")
    with system.running(), system.env_applied():
        yield system


@pytest.fixture
def sid() -> str:
    return "h" + uuid.uuid4().hex[:12]


def follow(base_url: str, stream_url: str, deadline_s: float = 120, opened: list | None = None) -> list[Event]:
    """The turn's events as EventSource gets them: a stream the server closes before the terminal
    event (it could not check the turn, the machine is overloaded) is reopened with Last-Event-ID.
    Each opening appends to `opened`, so a test can count reopens."""
    events: list[Event] = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if opened is not None:
            opened.append(stream_url)
        events += read_stream(base_url, stream_url, last_event_id=events[-1].id if events else None, timeout=60)
        if events and events[-1].type in TERMINAL_EVENTS:
            break
        time.sleep(1)
    return events


def finished(base_url: str, body: dict, headers: dict | None = None) -> dict:
    follow(base_url, body["stream_url"])
    return httpx.get(base_url + body["status_url"], headers=headers or bearer(), timeout=10).json()


def stream_until_closed(url: str, headers: dict | None = None, deadline_s: float = 30) -> list[Event]:
    """Every event until the server closes the stream. Fails if it is still open after
    `deadline_s` (heartbeats keep coming every second, so a stream that never ends is caught)."""
    events, fields = [], {}
    end = time.monotonic() + deadline_s
    with httpx.Client(timeout=10) as client, client.stream("GET", url, headers=headers or {}) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if time.monotonic() > end:
                raise AssertionError(f"the stream is still open after {deadline_s} s; events so far: {events}")
            if line.startswith(("event:", "id:", "data:")):
                name, _, value = line.partition(":")
                fields[name] = value.strip()
            elif not line and "data" in fields:
                events.append(Event(fields.get("event", "message"), fields.get("id", ""), json.loads(fields["data"])))
                fields = {}
    return events


# --- 1. session ownership ---------------------------------------------------------------------
def test_a_session_whose_owner_key_is_gone_is_not_claimable_while_its_data_lives(hostile, sid):
    base = hostile.base_url
    alice, mallory = bearer("alice", "acme"), bearer("mallory", "evilcorp")
    first = post_prompt(base, sid, "What is the weather in Paris?", headers=alice).json()
    assert finished(base, first, alice)["status"] == "done"
    broker = hostile.client("broker")
    broker.delete(keys.session_owner(sid))  # the owner key expired (or was lost) before the data

    taken = post_prompt(base, sid, "And in Berlin?", headers=mallory)
    assert taken.status_code == 404 and taken.json()["error"] == "not_found"
    listing = httpx.get(f"{base}/api/sessions/{sid}/messages", headers=mallory)
    assert listing.status_code == 404 and "Paris" not in listing.text

    # Once the data is gone too, the id is free again.
    broker.delete(keys.session_turns(sid), keys.session_history(sid))
    assert post_prompt(base, sid, "calculate 1 + 1", headers=mallory).status_code == 202


def test_the_owner_key_is_renewed_with_the_session_data(hostile, sid):
    base = hostile.base_url
    first = post_prompt(base, sid, "calculate 2 + 3").json()
    finished(base, first)
    broker = hostile.client("broker")
    broker.expire(keys.session_owner(sid), 30)  # nearly lapsed while the data lives on
    second = post_prompt(base, sid, "calculate 3 + 4").json()
    finished(base, second)
    owner_ttl = broker.ttl(keys.session_owner(sid))
    assert owner_ttl >= broker.ttl(keys.session_turns(sid)) > 30
    assert owner_ttl >= broker.ttl(keys.session_history(sid)) > 30


def test_records_and_history_are_filtered_by_owner(hostile, sid):
    """Even a session whose owner changed (as the lapse used to allow) shows a user only their own
    turns, and the reasoner only their own history: a bare city follows up on a weather question
    only if that question was the same user's."""
    base = hostile.base_url
    alice, mallory = bearer("alice", "acme"), bearer("mallory", "evilcorp")
    first = post_prompt(base, sid, "What is the weather in Paris?", headers=alice).json()
    finished(base, first, alice)
    hostile.client("broker").set(keys.session_owner(sid), "evilcorp/mallory")

    follow_up = post_prompt(base, sid, "And in Berlin?", headers=mallory).json()
    events = follow(base, follow_up["stream_url"])
    assert [e.data["tool"] for e in tool_calls(events)] == ["search_kb"]
    listing = httpx.get(f"{base}/api/sessions/{sid}/messages", headers=mallory).json()["messages"]
    assert [m["prompt"] for m in listing] == ["And in Berlin?"]


def test_refused_posts_claim_no_session(hostile, sid):
    from web.ratelimit import TurnRateLimiter
    from shared.settings import get_settings
    from web.errors import ApiError

    broker = hostile.client("broker")
    bad = httpx.post(f"{hostile.base_url}/api/sessions/{sid}/messages", json={"prompt": ""}, headers=bearer(), timeout=10)
    assert bad.status_code == 400 and not broker.exists(keys.session_owner(sid))

    squatter = Principal("squatter", "acme", ("analyst",))
    limiter = TurnRateLimiter(get_settings())
    with pytest.raises(ApiError):  # fill the squatter's window, as 60 accepted posts would
        for _ in range(1000):
            limiter.hit(squatter)
    for i in range(5):
        refused = post_prompt(hostile.base_url, f"{sid}{i}", "hello", headers=bearer("squatter", "acme"))
        assert refused.status_code == 429
        assert not broker.exists(keys.session_owner(f"{sid}{i}"))


# --- 2. every stream ends -----------------------------------------------------------------------
def unsent_turn(sid: str, owner: Principal) -> tuple[str, str]:
    """A turn recorded on the broker but never sent to a worker: only the test moves it."""
    message_id = uuid.uuid4().hex
    turns.create_turn(sid, message_id, owner, "a prompt")
    return message_id, f"/stream/{sid}/{message_id}?token={issue_stream_token(owner, sid, message_id)}"


def test_a_stream_ends_when_its_turn_ends_without_a_terminal_event(hostile, sid):
    """The worker finished the turn but its `done` never reached the progress store (it was down,
    or the worker's breaker was open): the stream finds the outcome at a heartbeat and ends."""
    alice = Principal("alice", "acme", ("analyst",))
    message_id, url = unsent_turn(sid, alice)
    with ThreadPoolExecutor(1) as pool:
        reader = pool.submit(stream_until_closed, hostile.base_url + url)
        time.sleep(2)  # the stream is open and heartbeating
        turns.update_turn(sid, message_id, status=DONE, answer="forty-two")
        events = reader.result(timeout=60)
    assert [(e.type, e.data.get("answer")) for e in events] == [("done", "forty-two")]


def test_a_stream_closes_at_once_when_the_outcome_cannot_be_checked(hostile, sid):
    alice = Principal("alice", "acme", ("analyst",))
    _, url = unsent_turn(sid, alice)
    hostile.stop_redis("broker")
    try:
        assert stream_until_closed(hostile.base_url + url, deadline_s=20) == []
    finally:
        hostile.restart_redis("broker")


def test_a_last_event_id_beyond_the_log_ends_a_finished_turns_stream(hostile, sid):
    body = post_prompt(hostile.base_url, sid, "calculate 6 * 7").json()
    events = follow(hostile.base_url, body["stream_url"])
    assert events[-1].type == "done"
    beyond = stream_until_closed(hostile.base_url + body["stream_url"], headers={"Last-Event-ID": "99999999999999-0"})
    assert beyond == []


def test_workers_publish_again_a_terminal_event_the_progress_store_dropped(hostile, sid):
    base = hostile.base_url
    hostile.stop_redis("progress")
    try:
        body = post_prompt(base, sid, "calculate 5 * 5").json()
        deadline = time.monotonic() + 60
        while httpx.get(base + body["status_url"], headers=bearer(), timeout=10).json()["status"] != "done":
            assert time.monotonic() < deadline, "the turn did not finish"
            time.sleep(0.5)
    finally:
        hostile.restart_redis("progress")
    log_key = keys.progress_log(sid, body["message_id"])
    deadline = time.monotonic() + 90
    while not any(f["type"] == "done" for _, f in hostile.client("progress").xrange(log_key)):
        assert time.monotonic() < deadline, "no worker published the dropped terminal event again"
        time.sleep(1)


def test_streams_opened_after_a_progress_restart_that_no_stream_saw_stay_open(hostile, sid):
    """The progress store restarts while no stream is open on the web process: its idle pub/sub
    connection is dead, and nothing has read from it since. The next streams must not be cut
    (or their subscriptions confused) by it: each opens once and ends with its turn's answer."""
    alice = Principal("alice", "acme", ("analyst",))
    warm_id, warm_url = unsent_turn(sid, alice)
    with ThreadPoolExecutor(1) as pool:  # the web process subscribes once, then holds no channel
        reader = pool.submit(stream_until_closed, hostile.base_url + warm_url)
        time.sleep(1)
        turns.update_turn(sid, warm_id, status=DONE, answer="warm")
        assert [e.type for e in reader.result(timeout=60)] == ["done"]
    hostile.stop_redis("progress")
    hostile.restart_redis("progress")
    message_id, url = unsent_turn(sid, alice)
    openings: list[str] = []
    with ThreadPoolExecutor(5) as pool:
        readers = [pool.submit(follow, hostile.base_url, url, 60, openings) for _ in range(5)]
        time.sleep(3)  # heartbeats every second: a stream cut meanwhile has reopened by now
        turns.update_turn(sid, message_id, status=DONE, answer="after the restart")
        ended = [reader.result(timeout=60) for reader in readers]
    assert len(openings) == 5, f"streams were closed and reopened: {len(openings) - 5}"
    assert [[(e.type, e.data.get("answer")) for e in events] for events in ended] == [[("done", "after the restart")]] * 5


def test_every_stream_of_turns_that_end_without_a_terminal_event_ends_with_its_own_answer(hostile, sid):
    """Many streams on a few turns (a process reads each turn's status once per beat for all of
    them): each stream, followed as EventSource does, ends with its own turn's outcome, and only
    when that turn ends."""
    alice = Principal("alice", "acme", ("analyst",))
    first, second = unsent_turn(sid, alice), unsent_turn(sid, alice)
    # Every opening of the second turn's streams: `follow` reopens a stream the server closed, so
    # a stream of the running turn closed early shows here as a second opening, not as an end.
    second_openings: list[str] = []
    with ThreadPoolExecutor(10) as pool:
        readers = {first: [pool.submit(follow, hostile.base_url, first[1], 60) for _ in range(5)],
                   second: [pool.submit(follow, hostile.base_url, second[1], 60, second_openings) for _ in range(5)]}
        time.sleep(2)  # every stream is open and heartbeating
        turns.update_turn(sid, first[0], status=DONE, answer="first answer")
        ended = [reader.result(timeout=60) for reader in readers[first]]
        time.sleep(2)  # a beat or more in which the second turn's streams could be closed wrongly
        turns.update_turn(sid, second[0], status=DONE, answer="second answer")
        ended_later = [reader.result(timeout=60) for reader in readers[second]]
    assert len(second_openings) == 5, f"streams of a running turn were closed and reopened: {len(second_openings) - 5}"
    assert [[(e.type, e.data.get("answer")) for e in events] for events in ended] == [[("done", "first answer")]] * 5
    assert [[(e.type, e.data.get("answer")) for e in events] for events in ended_later] == [[("done", "second answer")]] * 5


def test_open_streams_close_when_the_broker_can_no_longer_say_whether_their_turn_ended(hostile, sid):
    """The broker goes down under open streams: they close (EventSource then retries) instead of
    heartbeating on without ever learning the outcome."""
    alice = Principal("alice", "acme", ("analyst",))
    _, url = unsent_turn(sid, alice)
    with ThreadPoolExecutor(3) as pool:
        readers = [pool.submit(stream_until_closed, hostile.base_url + url, None, 30) for _ in range(3)]
        time.sleep(2)  # open and heartbeating
        hostile.stop_redis("broker")
        try:
            assert [reader.result(timeout=60) for reader in readers] == [[], [], []]
        finally:
            hostile.restart_redis("broker")


# --- 3. statuses and input ----------------------------------------------------------------------
def signed(claims: dict) -> dict:
    token = jwt.encode({"aud": API_AUDIENCE, "exp": int(time.time()) + 600, "sub": "alice", "tenant": "acme",
                        **claims}, TEST_SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("claims", [{"roles": 5}, {"roles": "admin"}, {"roles": [1]}, {"sub": 5},
                                    {"tenant": None}, {"tenant": ["acme"]}, {"exp": "soon"}])
def test_a_signed_token_with_a_malformed_claim_is_a_401(hostile, claims):
    response = httpx.get(f"{hostile.base_url}/api/sessions", headers=signed(claims), timeout=10)
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"


@pytest.mark.parametrize("path", ["/api/sessions/deep1/messages", "/api/dev/token", "/admin/auth/invalidate"])
@pytest.mark.parametrize("body", ["[" * 20000 + "]" * 20000, '{"prompt": ' + "[" * 5000 + "]" * 5000 + "}",
                                  '{"prompt": "x"', '{"prompt": "\\ud800"}', '{"prompt": 1' + "0" * 5000 + "}"])
def test_any_unparseable_json_is_a_400(hostile, path, body):
    headers = {**bearer("ops", "acme", ("admin",)), "Content-Type": "application/json"}
    response = httpx.post(hostile.base_url + path, content=body.encode(), headers=headers, timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["error"] in ("invalid_json", "invalid_body")


BAD_IDS = ["1-", "1_000-0", "\u0661-0", "1", "-1-0", " 1-0", "1-0 ", "18446744073709551616-0",
           "0-18446744073709551616", "1" * 21 + "-0", "0x1-0", "1-0-0"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_an_event_id_redis_would_refuse_is_a_400(hostile, sid, bad):
    body = post_prompt(hostile.base_url, sid, "calculate 1 + 3").json()
    polled = httpx.get(f"{hostile.base_url}{body['status_url']}/events", params={"after": bad}, headers=bearer())
    assert polled.status_code == 400 and polled.json()["error"] == "invalid_after"
    streamed = httpx.get(f"{hostile.base_url}{body['stream_url']}&last_event_id={quote(bad)}", timeout=10)
    assert streamed.status_code == 400 and streamed.json()["error"] == "invalid_after"


def test_the_largest_event_id_is_accepted(hostile, sid):
    body = post_prompt(hostile.base_url, sid, "calculate 1 + 4").json()
    polled = httpx.get(f"{hostile.base_url}{body['status_url']}/events",
                       params={"after": f"{2**64 - 1}-{2**64 - 1}"}, headers=bearer())
    assert polled.status_code == 200 and polled.json()["events"] == []


@pytest.mark.parametrize("char", ["é", "\U0001F600"], ids=["accented", "emoji"])
def test_the_prompt_limit_counts_characters_however_json_escapes_them(hostile, sid, char):
    url = f"{hostile.base_url}/api/sessions/{sid}/messages"
    headers = {**bearer(), "Content-Type": "application/json"}
    at_limit = json.dumps({"prompt": char * 4000}).encode()  # ensure_ascii: \\u escapes, the worst case
    accepted = httpx.post(url, content=at_limit, headers=headers, timeout=10)
    assert accepted.status_code == 202, accepted.text
    over = httpx.post(url, content=json.dumps({"prompt": char * 4001}).encode(), headers=headers, timeout=10)
    assert over.status_code == 413 and over.json()["error"] == "prompt_too_long"


def test_a_405_names_the_allowed_methods(hostile):
    response = httpx.put(f"{hostile.base_url}/api/sessions/s1/messages", headers=bearer())
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"
    assert {"GET", "POST"} <= {m.strip() for m in response.headers["Allow"].split(",")}


def raw_request(port: int, request: bytes) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:  # gunicorn closes with part of a refused request unread
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize("request_bytes,status", [
    (b"GET /" + b"a" * 4500 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 8300 + b"\r\n\r\n", 431),
    (b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n", 431),
    (b"NOT AN HTTP REQUEST\r\n\r\n", 400)], ids=["long-url", "big-header", "many-headers", "garbage"])
def test_requests_gunicorn_refuses_itself_get_json_errors(hostile, request_bytes, status):
    code, headers, body = raw_request(hostile.web_port, request_bytes)
    assert code == status
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] and json.loads(body)["message"]


# --- 4. a runaway tool call fails alone ---------------------------------------------------------
def test_a_runaway_calculation_fails_alone_while_other_tenants_tools_finish(hostile):
    base = hostile.base_url
    evil, acme = bearer("mallory", "evilcorp"), bearer("bob", "acme")
    with ThreadPoolExecutor(len(CITIES) + 1) as pool:
        runaway = pool.submit(lambda: post_prompt(base, "r" + uuid.uuid4().hex[:10], RUNAWAY, headers=evil).json())
        time.sleep(0.5)  # the runaway call is in the tool server when the weather calls arrive
        weather = [pool.submit(lambda c=city: post_prompt(base, "w" + uuid.uuid4().hex[:10],
                                                           f"What is the weather in {c}?", headers=acme).json())
                   for city in CITIES]
        bodies = [f.result() for f in weather]
        weather_events = list(pool.map(lambda b: follow(base, b["stream_url"]), bodies))
        runaway_events = follow(base, runaway.result()["stream_url"])
    for events in weather_events:
        assert events[-1].type == "done", events[-1]
        assert [e.data["status"] for e in tool_calls(events)] == ["ok"], events
    calls = [e.data for e in tool_calls(runaway_events)]
    assert runaway_events[-1].type == "done"
    assert calls[0]["status"] == "error" and "too large" in calls[0]["error"]


# --- 5. dev tokens ---------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [{"user": "root"}, {"tenant": "acme"}, {"roles": ["admin"]},
                                  {"roles": ["analyst", "admin"]}, {"user": "demo", "tenant": "demo", "roles": []}])
def test_the_dev_endpoint_mints_only_the_demo_identity(hostile, body):
    refused = httpx.post(f"{hostile.base_url}/api/dev/token", json=body, timeout=10)
    assert refused.status_code == 400 and "token" not in refused.json()


def test_the_dev_token_is_the_demo_analyst_and_not_an_admin(hostile):
    minted = httpx.post(f"{hostile.base_url}/api/dev/token", timeout=10).json()
    assert (minted["user"], minted["tenant"], minted["roles"]) == ("demo", "demo", ["analyst"])
    auth = {"Authorization": f"Bearer {minted['token']}"}
    assert httpx.get(f"{hostile.base_url}/ops/snapshot", headers=auth, timeout=10).status_code == 403
    assert httpx.get(f"{hostile.base_url}/api/sessions", headers=auth, timeout=10).status_code == 200


# --- floods: one client cannot take the web process ------------------------------------------------
@pytest.fixture(scope="module")
def limited_web(hostile):
    """A second web process on the same stores whose request limit is 5 a minute per client."""
    port = processes.free_port()
    env = {**hostile.env, "TURNSTREAM_REQUEST_RATE_LIMIT": "5/minute"}
    server = processes.web_server(env, port, hostile.log_dir / "limited").start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_a_client_over_its_request_limit_gets_a_429_while_other_clients_get_through(limited_web):
    mallory, alice = bearer("mallory", "evilcorp"), bearer("alice", "acme")
    answers = [httpx.get(f"{limited_web}/api/sessions", headers=mallory, timeout=10) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    refused = answers[-1]
    assert refused.json()["error"] == "too_many_requests"
    assert "5 requests per 1 minute" in refused.json()["message"]
    assert "TURNSTREAM_REQUEST_RATE_LIMIT" in refused.json()["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Over the limit, even a body the parser would choke on is refused before it is read.
    body = httpx.post(f"{limited_web}/api/sessions/x1/messages", content=b"[" * 20000, timeout=10,
                      headers={**mallory, "Content-Type": "application/json"})
    assert body.status_code == 429
    # Another user from the same address still gets through; so do probes.
    assert httpx.get(f"{limited_web}/api/sessions", headers=alice, timeout=10).status_code == 200
    assert all(httpx.get(f"{limited_web}/healthz", timeout=10).status_code == 200 for _ in range(7))


def test_requests_without_a_valid_token_count_against_their_address(limited_web):
    forged = {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.forged"}
    statuses = [httpx.get(f"{limited_web}/api/sessions", headers=forged, timeout=10).status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]
    # No proxy is trusted by default: an X-Forwarded-For the client writes itself changes nothing.
    spoofed = httpx.get(f"{limited_web}/api/sessions", headers={**forged, "X-Forwarded-For": "10.9.9.9"}, timeout=10)
    assert spoofed.status_code == 429
    # A valid user from that address is another client.
    assert httpx.get(f"{limited_web}/api/sessions", headers=bearer("bob", "acme"), timeout=10).status_code == 200


APP_ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def proxied_web(hostile):
    """A web process behind one trusted proxy hop, limited to 5 requests a minute per client,
    serving the API cross-origin to APP_ORIGIN."""
    port = processes.free_port()
    env = {**hostile.env, "TURNSTREAM_REQUEST_RATE_LIMIT": "5/minute", "TURNSTREAM_TRUSTED_PROXIES": "1",
           "TURNSTREAM_CORS_ORIGINS": APP_ORIGIN}
    server = processes.web_server(env, port, hostile.log_dir / "proxied").start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def tokenless_statuses(base_url: str, address: str, count: int) -> list[int]:
    """`count` requests without a token from `address` (as the trusted proxy forwards it)."""
    return [httpx.get(f"{base_url}/api/sessions", headers={"X-Forwarded-For": address}, timeout=10).status_code
            for _ in range(count)]


def test_preflights_and_the_page_do_not_spend_the_request_limit(proxied_web):
    """A cross-origin client polling its turns sends a preflight before each poll; a user reloads
    the page. Neither is refused, and neither spends what the address may send to the API."""
    client = {"X-Forwarded-For": "10.0.0.1"}
    preflight = {**client, "Origin": APP_ORIGIN, "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}
    preflights = [httpx.options(f"{proxied_web}/api/sessions/s1/messages", headers=preflight, timeout=10)
                  for _ in range(10)]
    assert [p.status_code for p in preflights] == [200] * 10
    assert all(p.headers["Access-Control-Allow-Origin"] == APP_ORIGIN for p in preflights)
    for path in ["/", "/static/app.js", "/static/app.css", "/vocabulary.js"] * 3:
        assert httpx.get(proxied_web + path, headers=client, timeout=10).status_code == 200, path
    assert tokenless_statuses(proxied_web, "10.0.0.1", 6) == [401] * 5 + [429]


def test_behind_a_trusted_proxy_each_forwarded_address_is_its_own_client(proxied_web):
    """Users behind one ingress: one address over its limit leaves the others their own."""
    assert tokenless_statuses(proxied_web, "10.0.0.2", 6) == [401] * 5 + [429]
    assert tokenless_statuses(proxied_web, "10.0.0.3", 1) == [401]


@pytest.fixture(scope="module")
def default_limited_web(hostile):
    """A web process with the default request limit (every other test stack lifts it)."""
    port = processes.free_port()
    env = {**hostile.env, "TURNSTREAM_REQUEST_RATE_LIMIT": defaults.REQUEST_RATE_LIMIT}
    server = processes.web_server(env, port, hostile.log_dir / "default-limit").start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def load_page(client: httpx.Client, headers: dict, opened: str, pool: ThreadPoolExecutor) -> list[httpx.Response]:
    """What a page load sends, as web/static/app.js does, at once: the page and its files, the
    session list at sign-in and again to draw it, up to 30 sessions read at once for their titles,
    then the session in the address bar."""
    def get(path: str, auth: bool = True) -> httpx.Response:
        return client.get(path, headers=headers if auth else {})

    answers = [get(path, auth=False) for path in ("/", "/static/app.css", "/static/app.js", "/vocabulary.js",
                                                  "/static/timeline.js", "/static/stream.js", "/static/markdown.js")]
    answers += [get("/api/sessions"), get("/api/sessions")]
    sessions = answers[-1].json()["sessions"]
    answers += list(pool.map(get, [f"/api/sessions/{s}/messages" for s in sessions[:30]]))
    return answers + [get(f"/api/sessions/{opened}/messages")]


def test_a_user_reloading_the_page_stays_within_the_default_request_limit(default_limited_web):
    """A user with many sessions loads the page and reloads it at once: nothing is refused. The
    client keeps its connections open and uses 6 at a time, as a browser does over HTTP/1.1."""
    carol = Principal("carol", "acme", ("analyst",))
    sessions = ["h" + uuid.uuid4().hex[:12] for _ in range(31)]
    for session_id in sessions:
        message_id = uuid.uuid4().hex
        assert turns.claim_session(session_id, carol)
        turns.create_turn(session_id, message_id, carol, "a prompt")
        turns.update_turn(session_id, message_id, status=DONE, answer="an answer")
    browser = httpx.Client(base_url=default_limited_web, timeout=30, limits=httpx.Limits(max_connections=6))
    with browser, ThreadPoolExecutor(30) as pool:
        answers = [answer for _ in range(2) for answer in load_page(browser, bearer("carol", "acme"), sessions[0], pool)]
    assert len(answers) == 2 * (7 + 2 + 30 + 1)
    assert [(a.request.url.path, a.status_code) for a in answers if a.status_code != 200] == []


def test_a_connection_that_never_finishes_its_request_line_is_dropped(hostile):
    """Slowloris: half a request line, then silence. gunicorn's keepalive (5 s) bounds how long
    the head of a request may take; the connection does not stay open for good."""
    with socket.create_connection(("127.0.0.1", hostile.web_port), timeout=30) as conn:
        conn.sendall(b"GET /api/sessi")
        assert conn.recv(65536) == b""  # closed by the server (a timeout here raises and fails)


# --- a broker that refuses writes -----------------------------------------------------------------
@contextmanager
def web_on_refusing_broker(hostile, how: str):
    """A second web server whose broker is a redis-server that refuses writes: full (maxmemory
    reached under noeviction) or read-only (a replica of the stack's broker). No worker uses it:
    demoting a broker under a Celery worker ends the worker (kombu treats the UNBLOCKED error of
    its BRPOP as unrecoverable), which is the broker's failover to handle, not the web tier's."""
    port = processes.free_port()
    server = processes.redis_server("broker", port, hostile.base_dir / f"refusing-{how}").start()
    web = None
    try:
        refusing = redis.Redis(port=port, decode_responses=True)
        if how == "read-only":
            refusing.replicaof("127.0.0.1", hostile.ports["broker"])
        env = {**hostile.env, "BROKER_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        web_port = processes.free_port()
        web = processes.web_server(env, web_port, hostile.log_dir / f"refusing-{how}").start()
        if how == "out-of-memory":
            refusing.config_set("maxmemory", 1)
        yield f"http://127.0.0.1:{web_port}"
    finally:
        for executor in (web, server):
            if executor is not None:
                executor.stop()


@pytest.mark.parametrize("how", ["out-of-memory", "read-only"])
def test_a_broker_that_refuses_writes_is_a_503_with_retry_after(hostile, sid, how):
    with web_on_refusing_broker(hostile, how) as base_url:
        response = post_prompt(base_url, sid, "calculate 1 + 2")
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "unavailable" and int(response.headers["Retry-After"]) > 0
    assert "refuses writes" in response.json()["message"]
