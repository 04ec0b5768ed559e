"""A real Flower, started with `turnstream flower` against the stack's broker, sees our steps."""

import time

import httpx
import pytest
from click.testing import CliRunner

from shared.cli import main
from shared.cli import processes
from shared.turn_flow import task_name
from shared.vocabulary import STEPS
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


def test_flower_lists_the_four_steps_of_a_turn(flower_url, base_url, session_id):
    body = post_prompt(base_url, session_id, "What is the weather in Paris?").json()
    assert read_stream(base_url, body["stream_url"])[-1].type == "done"

    def steps_of_this_turn() -> set[str]:
        return {task["name"] for task in flower_tasks(flower_url).values()
                if body["message_id"] in str(task.get("args", ""))}

    deadline = time.monotonic() + 20
    seen = steps_of_this_turn()
    # The four steps, plus the tool calls `execute` fans out and the `collect` that ends its chord.
    expected = {task_name(step) for step in (*STEPS, "call_tool", "collect")}
    while seen != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        seen = steps_of_this_turn()
    assert seen == {"turnstream.reason", "turnstream.discover", "turnstream.execute", "turnstream.synthesize",
                    "turnstream.call_tool", "turnstream.collect"}


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
