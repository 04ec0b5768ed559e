"""Single-instance mode: one REDIS_URL, a DB number per store, the whole turn still works."""

import pytest

from tests.sse import post_prompt, read_stream
from tests.stack import Stack


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("single")).running(single_redis=True, name="single-worker") as system:
        yield system


def test_a_turn_completes_on_one_redis_with_a_db_per_store(single):
    body = post_prompt(single.base_url, "single1", "What is the weather in Tokyo?").json()
    events = read_stream(single.base_url, body["stream_url"])
    assert events[-1].data["answer"].startswith("In Tokyo it is 21°C")
    assert single.client("broker").exists(f"agent:turn:single1:{body['message_id']}")
    assert single.client("progress").exists(f"agent:progress-log:{{single1:{body['message_id']}}}")
    assert "single-instance mode" in single.log("web")
