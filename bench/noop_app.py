"""Baseline for bench/turn_latency.py and bench/capacity.py: a bare Celery chain of four no-op
tasks, same broker, same settings. The first task stamps when it began (`first_started`, wall
clock), the bare chain's counterpart of a turn's first event."""

import time

from shared.celery_config import make_celery

app = make_celery("noop")


@app.task(name="noop.step")
def step(payload: dict) -> dict:
    payload.setdefault("first_started", time.time())
    return payload
