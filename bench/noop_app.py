"""Baseline for bench/turn_latency.py and bench/capacity.py: a bare Celery chain of four no-op
tasks, same broker, same settings. The first task stamps when it began (`first_started`, wall
clock), the bare chain's counterpart of a turn's first event.

For bench/bare_web.py (the least an HTTP + SSE tier can add), a payload with a `log` key also
gets one entry per step appended to that Redis stream on the progress server, the last one
named `done`: the floor of a turn's event log, without claims, checkpoints or guards."""

import os
import time

import redis

from shared.celery_config import make_celery

app = make_celery("noop")
STEPS = 4
_log: redis.Redis | None = None


def event_log() -> redis.Redis:
    global _log
    if _log is None:
        _log = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            os.environ["PROGRESS_REDIS_URL"], max_connections=10_000))  # bare_web: one per open stream
    return _log


@app.task(name="noop.step")
def step(payload: dict) -> dict:
    payload.setdefault("first_started", time.time())
    if "log" in payload:
        payload["n"] = payload.get("n", 0) + 1
        event_log().xadd(payload["log"], {"event": "done" if payload["n"] == STEPS else "step"})
    return payload
