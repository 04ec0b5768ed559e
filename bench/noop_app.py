"""Baseline for bench/turn_latency.py: a bare Celery chain of four no-op tasks, same broker, same settings."""

from shared.celery_config import make_celery

app = make_celery("noop")


@app.task(name="noop.step")
def step(payload: dict) -> dict:
    return payload
