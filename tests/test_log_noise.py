"""The logs of a turn with tool calls carry no warning about our own set-up: gevent patches before
ssl is imported (no MonkeyPatchWarning from gunicorn), and chords put their errback where Celery
will put it by default (no CPendingDeprecationWarning). The root SecurityWarning is Celery's word
about running as root: the image runs as uid 10001, so only a worker started as root shows it."""

import uuid

from tests.sse import post_prompt, read_stream


def test_a_turn_with_tool_calls_logs_no_warning_of_ours(stack, base_url):
    body = post_prompt(base_url, "s" + uuid.uuid4().hex[:12], "calculate 6 * 7 + 1").json()
    events = read_stream(base_url, body["stream_url"])
    assert events[-1].type == "done"
    assert any(e.type == "tool" for e in events), "the turn ran a chord of tool calls"
    web, worker = stack.log("web"), stack.log("worker")
    assert "turn accepted" in web and body["message_id"] in worker
    assert "MonkeyPatchWarning" not in web
    assert "CPendingDeprecationWarning" not in worker
    assert "task_allow_error_cb_on_chord_header" not in worker
