"""Pure parts of operations: guard ratios, JSON log lines with their context, names and redaction."""

import io
import json
import logging
import os
import subprocess
import sys

from shared import logs, metrics
from shared.guards import stats
from shared.turn_flow import step_of
from shared.vocabulary import GUARD_RESULTS
from web.snapshot import redacted
from workers.telemetry import turn_ids


def test_guard_ratios_are_shares_of_the_lookups_that_reached_redis():
    counts = {"exec_cache": {"hit": 6, "miss": 2, "coalesced": 2, "bypass": 5},
              "auth_memo": {"hit": 3, "miss": 1, "bypass": 7}}
    ratios = stats.guard_ratios(counts)
    assert ratios["exec_cache"] == {"hit": 0.6, "miss": 0.2, "coalesced": 0.2}
    assert ratios["auth_memo"] == {"hit": 0.75, "miss": 0.25}


def test_guard_ratios_are_none_without_lookups():
    counts = {guard: dict.fromkeys(results, 0) for guard, results in GUARD_RESULTS.items()}
    assert stats.guard_ratios(counts)["auth_memo"] == {"hit": None, "miss": None}


def test_json_log_lines_carry_the_bound_ids():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter("worker"))
    handler.setFormatter(logs.json_formatter())
    logger = logging.getLogger("tests.json-logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with logs.bound(session_id="s1", message_id="m1", task_id="t1", task_name="turnstream.reason"):
            logger.warning("inside")
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["message"] == "inside" and inside["level"] == "WARNING" and inside["service"] == "worker"
    assert (inside["session_id"], inside["message_id"], inside["task_id"], inside["task_name"]) == (
        "s1", "m1", "t1", "turnstream.reason")
    assert outside["session_id"] is None and outside["task_id"] is None
    assert inside["trace_id"] is None, "no span, no trace id"


def test_step_names_and_turn_ids_come_from_the_task():
    assert step_of("turnstream.execute") == "execute"
    assert turn_ids(({"session_id": "s", "message_id": "m", "prompt": "p"},)) == {"session_id": "s", "message_id": "m"}
    assert turn_ids(()) == {"session_id": None, "message_id": None}


def test_redis_urls_are_shown_without_passwords():
    assert redacted("redis://:hunter2@broker:6379/0") == "redis://:***@broker:6379/0"
    assert redacted("redis://127.0.0.1:6391/0") == "redis://127.0.0.1:6391/0"


def test_live_gauges_of_dead_processes_are_forgotten(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    (tmp_path / f"gauge_livesum_{dead_pid}.db").write_bytes(b"")
    (tmp_path / f"gauge_livesum_{os.getpid()}.db").write_bytes(b"")
    (tmp_path / f"counter_{dead_pid}.db").write_bytes(b"")
    assert metrics.forget_dead_processes(str(tmp_path)) == [dead_pid]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"gauge_livesum_{os.getpid()}.db", f"counter_{dead_pid}.db"])
