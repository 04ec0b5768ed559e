"""Progress streaming: replay after any cut, late joiners, heartbeats, shared subscriptions,
slow clients, polling, token coalescing. Real redis-server, real gunicorn+gevent, HTTP clients."""

import json
import random
import socket
import threading
import time
import uuid

import httpx
import pytest
from flask_sse import Message
from httpx_sse import connect_sse

from shared.cli import processes
from shared.events import DoneEvent, StepEvent, DeltaEvent
from shared.identity import Principal, issue_stream_token
from shared.progress import Publisher, DeltaCoalescer, read_log
from tests.sse import bearer, post_prompt, read_stream

ALICE = Principal("alice", "acme", ("analyst",))


def new_turn() -> tuple[str, str]:
    return "s" + uuid.uuid4().hex[:10], "m" + uuid.uuid4().hex[:10]


def stream_path(session_id: str, message_id: str) -> str:
    return f"/stream/{session_id}/{message_id}?token={issue_stream_token(ALICE, session_id, message_id)}"


def publish_sequence(session_id: str, message_id: str, count: int, pause: float = 0.0, size: int = 0) -> list[str]:
    publisher = Publisher(session_id, message_id)
    ids = []
    for i in range(count):
        ids.append(publisher.publish(DeltaEvent(text=f"{i}:" + "x" * size)))
        if pause:
            time.sleep(pause)
    ids.append(publisher.publish(DoneEvent(answer="end")))
    return ids


@pytest.fixture(scope="module")
def tuned_web(stack):
    """A second web process on the same Redis with a short heartbeat and small client queues."""
    port = processes.free_port()
    env = {**stack.env, "TURNSTREAM_SSE_HEARTBEAT_S": "0.3", "TURNSTREAM_SSE_CLIENT_QUEUE": "64"}
    server = processes.web_server(env, port, stack.log_dir / "tuned").start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_published_payload_is_flask_sse_wire_format_with_the_log_id(stack):
    sid, mid = new_turn()
    pubsub = stack.client("progress").pubsub()
    pubsub.subscribe(f"agent:progress:{{{sid}:{mid}}}")
    pubsub.get_message(timeout=1)
    event_id = Publisher(sid, mid).publish(StepEvent(step="reason", status="started"))
    payload = pubsub.get_message(timeout=2)["data"]
    message = Message(**json.loads(payload))
    assert (message.type, message.id, json.loads(message.data)) == ("step", event_id,
                                                                    {"step": "reason", "status": "started"})
    assert [e.id for e in read_log(sid, mid)] == [event_id]
    assert 0 < stack.client("progress").ttl(f"agent:progress-log:{{{sid}:{mid}}}") <= 600
    pubsub.close()


def test_several_events_go_out_in_one_call_in_order_once_per_dedupe_name(stack):
    """Publisher.publish_all (a step's start with its tool calls): each event is logged and
    published in order, as `publish` would; a second call with the same dedupe names adds nothing."""
    sid, mid = new_turn()
    pubsub = stack.client("progress").pubsub()
    pubsub.subscribe(f"agent:progress:{{{sid}:{mid}}}")
    pubsub.get_message(timeout=1)
    events = [(StepEvent(step="execute", status="started"), "execute:started"),
              (DeltaEvent(text="no dedupe name"), None),
              (StepEvent(step="execute", status="finished"), "execute:finished")]
    publisher = Publisher(sid, mid, fail_soft=True)
    publisher.publish_all(events)
    logged = read_log(sid, mid)
    assert [(e.type, json.loads(e.data)) for e in logged] == [
        ("step", {"step": "execute", "status": "started"}), ("token", {"text": "no dedupe name"}),
        ("step", {"step": "execute", "status": "finished"})]
    wire = [Message(**json.loads(pubsub.get_message(timeout=2)["data"])) for _ in events]
    assert [m.id for m in wire] == [e.id for e in logged]
    publisher.publish_all([events[0], events[2]])
    assert [e.id for e in read_log(sid, mid)] == [e.id for e in logged]
    pubsub.close()


def test_random_cuts_and_reconnects_deliver_every_event_exactly_once_in_order(base_url):
    sid, mid = new_turn()
    count = 500
    published: list[str] = []
    publisher = threading.Thread(target=lambda: published.extend(publish_sequence(sid, mid, count, pause=0.004)))
    publisher.start()
    rng = random.Random(1234)
    received, cuts, last_id = [], 0, None
    with httpx.Client(timeout=20) as client:
        while not received or received[-1][1] != "done":
            read_before_cut = rng.randint(0, 3)  # 0: hang up as soon as the stream opens
            headers = {"Last-Event-ID": last_id} if last_id else {}
            with connect_sse(client, "GET", base_url + stream_path(sid, mid), headers=headers) as source:
                events = (sse for sse in source.iter_sse() if sse.data)
                for _, sse in zip(range(read_before_cut), events):
                    received.append((sse.id, sse.event, json.loads(sse.data)))
                    last_id = sse.id
                    if sse.event == "done":
                        break
            cuts += not received or received[-1][1] != "done"
    publisher.join()
    assert cuts >= 200
    assert [r[0] for r in received] == published
    assert [r[2].get("text", "").split(":")[0] for r in received[:-1]] == [str(i) for i in range(count)]


def test_a_late_joiner_gets_the_whole_history_and_the_stream_closes(base_url):
    sid, mid = new_turn()
    ids = publish_sequence(sid, mid, 20)
    events = read_stream(base_url, stream_path(sid, mid))
    assert [e.id for e in events] == ids
    assert events[-1].type == "done"


def test_reconnect_after_the_end_replays_the_tail_and_closes_at_once(base_url):
    sid, mid = new_turn()
    ids = publish_sequence(sid, mid, 10)
    tail = read_stream(base_url, stream_path(sid, mid), last_event_id=ids[6], timeout=5)
    assert [e.id for e in tail] == ids[7:]
    query = read_stream(base_url, stream_path(sid, mid) + f"&last_event_id={ids[8]}", timeout=5)
    assert [e.id for e in query] == ids[9:]


def test_an_idle_stream_opens_at_once_then_sends_heartbeats(tuned_web):
    sid, mid = new_turn()
    with httpx.Client(timeout=3) as client:
        with client.stream("GET", tuned_web + stream_path(sid, mid)) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.iter_lines()
            assert next(lines) == "retry: 2000"
            assert next(lines).startswith(":")
            heartbeat = next(line for line in lines if line.startswith(": heartbeat"))
            assert heartbeat


def test_one_pubsub_connection_serves_many_streams_and_channels_are_released(stack, tuned_web):
    """30 streams on 10 turns: one subscription per channel, no connection per client; a closed
    client is noticed at its next heartbeat (0.3 s here), and the last one out unsubscribes."""
    turns = [new_turn() for _ in range(10)]
    opened = threading.Barrier(31)
    release = threading.Event()

    def hold(sid: str, mid: str) -> None:
        with httpx.Client(timeout=20) as client:
            with client.stream("GET", tuned_web + stream_path(sid, mid)) as response:
                lines = response.iter_lines()  # keep a reference: a collected iterator hangs up
                next(lines)
                opened.wait()
                release.wait(20)

    threads = [threading.Thread(target=hold, args=turn) for turn in turns for _ in range(3)]
    for thread in threads:
        thread.start()
    opened.wait(20)
    progress = stack.client("progress")
    channels = [f"agent:progress:{{{sid}:{mid}}}" for sid, mid in turns]
    numsub = _wait_for(lambda: dict(progress.pubsub_numsub(*channels)), lambda n: all(n.values()))
    pubsub_connections = progress.client_list(_type="pubsub")
    release.set()
    for thread in threads:
        thread.join()
    assert len(pubsub_connections) <= 2, "at most one pub/sub connection per web process (two run here)"
    assert all(numsub[c] == 1 for c in channels), numsub
    released = _wait_for(lambda: dict(progress.pubsub_numsub(*channels)), lambda n: not any(n.values()))
    assert not any(released.values()), "the last client out unsubscribes"


def _wait_for(read, done, timeout: float = 10.0):
    """Poll `read()` until `done(value)` or `timeout`; return the last value."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


def _open_stalled_client(url: str) -> socket.socket:
    """A client that sends its request and then does not read, with a tiny receive window."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    return sock


def _read_all_events(sock: socket.socket) -> list[tuple[str, str]]:
    sock.settimeout(10)
    chunks = []
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    body = b"".join(chunks).decode().split("\r\n\r\n", 1)[1]
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if line and not line.startswith(":")
                      and ":" in line)
        if "id" in fields:
            events.append((fields["id"].strip(), fields.get("event", "").strip()))
    return events


def test_a_slow_reader_is_cut_off_alone_and_resumes_without_loss(tuned_web):
    sid, mid = new_turn()
    path = stream_path(sid, mid)
    slow = _open_stalled_client(tuned_web)
    slow.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    fast_events: list = []
    fast = threading.Thread(target=lambda: fast_events.extend(read_stream(tuned_web, path, timeout=30)))
    fast.start()
    time.sleep(0.3)
    published = publish_sequence(sid, mid, 1500, pause=0.002, size=8000)
    fast.join()

    first_connection = _read_all_events(slow)
    slow.close()
    assert first_connection and first_connection[-1][1] != "done", "the slow client was cut before the end"
    rest = read_stream(tuned_web, path, last_event_id=first_connection[-1][0])
    assert [i for i, _ in first_connection] + [e.id for e in rest] == published
    assert [e.id for e in fast_events] == published, "the fast client on the same channel lost nothing"
    assert _metric(tuned_web, "turnstream_sse_clients_cut_total") >= 1
    assert _metric(tuned_web, "turnstream_sse_events_sent_total") >= 2 * len(published)


def _metric(base_url: str, name: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=20).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_polling_returns_the_same_events_as_the_stream(base_url, session_id):
    headers = bearer()
    body = post_prompt(base_url, session_id, "weather in Berlin").json()
    events_url = f"{base_url}/api/sessions/{session_id}/messages/{body['message_id']}/events"
    polled, after = [], None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        page = httpx.get(events_url, params={"after": after} if after else {}, headers=headers).json()
        polled += page["events"]
        after = page["last_event_id"]
        if page["status"] == "done" and polled and polled[-1]["type"] == "done":
            break
        time.sleep(0.05)
    streamed = read_stream(base_url, body["stream_url"])
    assert [(e["id"], e["type"], e["data"]) for e in polled] == [(e.id, e.type, e.data) for e in streamed]
    assert httpx.get(events_url, params={"after": "bogus"}, headers=headers).status_code == 400
    assert httpx.get(events_url, headers=bearer("mallory")).status_code == 404


def test_token_deltas_are_coalesced(stack):
    sid, mid = new_turn()
    coalescer = DeltaCoalescer(Publisher(sid, mid), interval=0.05)
    words = [f"w{i} " for i in range(100)]
    for word in words:
        coalescer.add(word)
        time.sleep(0.005)
    coalescer.flush()
    chunks = [json.loads(e.data)["text"] for e in read_log(sid, mid)]
    assert "".join(chunks) == "".join(words)
    assert 2 <= len(chunks) <= 25, f"{len(chunks)} token events for 100 deltas over ~0.5 s"


def test_a_lost_pubsub_connection_drops_streams_once_and_they_resume_from_the_log(stack, base_url):
    sid, mid = new_turn()
    publisher = Publisher(sid, mid)
    first_ids = [publisher.publish(DeltaEvent(text=str(i))) for i in range(5)]
    with httpx.Client(timeout=10) as client:
        with connect_sse(client, "GET", base_url + stream_path(sid, mid)) as source:
            events = (sse for sse in source.iter_sse() if sse.data)
            before = [next(events).id for _ in range(5)]
            stack.client("progress").client_kill_filter(_type="pubsub")
            after_kill = [sse.id for sse in events]  # the server closes the stream
    assert before == first_ids and after_kill == []
    rest_ids = [publisher.publish(DeltaEvent(text=str(i))) for i in range(5, 10)]
    closer = threading.Timer(0.5, lambda: rest_ids.append(publisher.publish(DoneEvent(answer="end"))))
    closer.start()
    resumed = read_stream(base_url, stream_path(sid, mid), last_event_id=before[-1], timeout=10)
    closer.join()
    assert [e.id for e in resumed] == rest_ids, "one reconnect: the rest of the log, then live, to the end"
