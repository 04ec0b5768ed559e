"""A real Flower, started with `turnstream flower` against the stack's broker, sees our steps."""

import json
import time

import httpx
import pytest
from click.testing import CliRunner

from shared.cli import main
from shared.cli import processes
from shared.turn_flow import task_name
from tests.sse import post_prompt, read_stream

AUTH = ("ops", "flower-test-password")


@pytest.fixture(scope="module")
def flower_url(stack):
    port = processes.free_port()
    env = {**stack.env, "FLOWER_BASIC_AUTH": ":".join(AUTH)}
    executor = processes.flower(env, port, stack.log_dir).start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_worker_events(url)
        yield url
    finally:
        executor.stop()


def wait_for_worker_events(flower_url: str, timeout: float = 30.0) -> None:
    """Flower lists a worker on its dashboard only once that worker's events reach it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(f"{flower_url}/workers", params={"json": 1}, auth=AUTH, timeout=10)
        if response.status_code == 200 and response.json().get("data"):
            return
        time.sleep(0.5)
    raise TimeoutError("Flower received no worker event")


def flower_tasks(flower_url: str) -> dict:
    response = httpx.get(f"{flower_url}/api/tasks", auth=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_flower_lists_the_tasks_of_a_turn(flower_url, base_url, session_id):
    body = post_prompt(base_url, session_id, "What is the weather in Paris?").json()
    assert read_stream(base_url, body["stream_url"])[-1].type == "done"

    def tasks_of_this_turn() -> set[str]:
        return {task["name"] for task in flower_tasks(flower_url).values()
                if body["message_id"] in str(task.get("args", ""))}

    # A task where the turn changes worker (workers.tasks): discover (which runs reason and fans
    # the call out, on a threads worker that serves the llm queue), the call, and collect (which
    # runs the next reason and synthesize).
    expected = {task_name(name) for name in ("discover", "call_tool", "collect")}
    deadline = time.monotonic() + 20
    seen = tasks_of_this_turn()
    while seen != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        seen = tasks_of_this_turn()
    assert seen == {"turnstream.discover", "turnstream.call_tool", "turnstream.collect"}
    # Each was shown as sent: discover's task-sent comes from the web tier, the others' from the
    # worker that sent them, each in its process's batch of task events (shared.sent_events).
    deadline = time.monotonic() + 20
    unsent = seen
    while unsent and time.monotonic() < deadline:
        unsent = {task["name"] for task in flower_tasks(flower_url).values()
                  if body["message_id"] in str(task.get("args", "")) and not task.get("sent")}
        time.sleep(0.5)
    assert not unsent, f"Flower never saw these sent: {unsent}"


def test_flower_wants_the_credentials_from_the_environment(flower_url):
    assert httpx.get(f"{flower_url}/api/tasks", timeout=10).status_code == 401
    assert httpx.get(f"{flower_url}/api/tasks", auth=("ops", "wrong"), timeout=10).status_code == 401


def test_turnstream_flower_refuses_to_run_without_auth(monkeypatch):
    monkeypatch.delenv("FLOWER_BASIC_AUTH", raising=False)
    from shared.settings import reload_settings

    reload_settings()
    result = CliRunner().invoke(main, ["flower"])
    assert result.exit_code != 0
    assert "FLOWER_BASIC_AUTH" in result.output


def test_flower_and_the_worker_log_show_no_user_text(flower_url, base_url, stack, session_id):
    """Prompts, answers and tool arguments stay out of Flower (task args, kwargs, results) and the
    worker's log, while the ids that let an operator follow the turn stay in."""
    prompt = "What is the weather in Reykjavik? My secret codeword is zanzibar-42"
    body = post_prompt(base_url, session_id, prompt).json()
    events = read_stream(base_url, body["stream_url"])
    assert events[-1].type == "done"
    answer = events[-1].data["answer"]
    assert answer

    def tasks_of_this_turn() -> list[dict]:
        return [task for task in flower_tasks(flower_url).values() if body["message_id"] in str(task.get("args", ""))]

    deadline = time.monotonic() + 20
    while len({t["name"] for t in tasks_of_this_turn() if t.get("state") == "SUCCESS"}) < 3 \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    shown = json.dumps(tasks_of_this_turn())
    assert "turnstream.call_tool" in shown and "<redacted" in shown
    for text in ("zanzibar-42", "Reykjavik", answer[:40]):
        assert text not in shown, f"Flower shows {text!r}"
    worker_log = stack.log("worker")
    assert body["message_id"] in worker_log
    for text in ("zanzibar-42", answer[:40]):
        assert text not in worker_log, f"the worker log shows {text!r}"


def test_redaction_can_be_turned_off_for_a_developer(monkeypatch):
    """TURNSTREAM_REDACT_USER_TEXT=0: the message headers carry the arguments as they are."""
    from shared.celery_config import make_celery
    from shared.settings import reload_settings

    turn = {"session_id": "s1", "message_id": "m1", "prompt": "my private question"}
    shown = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("TURNSTREAM_REDACT_USER_TEXT", setting)
        reload_settings()
        app = make_celery("redaction-test")
        message = app.amqp.as_task_v2("t1", task_name("discover"), args=(turn,), create_sent_event=True)
        assert message.headers["argsrepr"] == message.sent_event["args"]
        shown[setting] = message.headers["argsrepr"]
    reload_settings()
    assert "my private question" not in shown["1"] and "'message_id': 'm1'" in shown["1"]
    assert "my private question" in shown["0"]


def test_turnstream_flower_listens_on_loopback_unless_told_otherwise(monkeypatch):
    monkeypatch.setenv("FLOWER_BASIC_AUTH", ":".join(AUTH))
    from shared.settings import reload_settings

    reload_settings()
    launched = []
    monkeypatch.setattr("os.execvpe", lambda file, command, env: launched.append(command))
    assert CliRunner().invoke(main, ["flower"]).exit_code == 0
    assert CliRunner().invoke(main, ["flower", "--address", "0.0.0.0"]).exit_code == 0
    reload_settings()
    assert "--address=127.0.0.1" in launched[0] and "--address=0.0.0.0" in launched[1]
    assert launched[0][launched[0].index("-A") + 1] == "shared.flower_app"
