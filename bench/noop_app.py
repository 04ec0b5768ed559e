"""Baseline for bench/turn_latency.py and bench/capacity.py: a bare Celery chain of four no-op
tasks, same broker, same settings. The first task stamps when it began (`first_started`, wall
clock), the bare chain's counterpart of a turn's first event.

For bench/bare_web.py (the least an HTTP + SSE tier can add), a payload with a `log` key also
gets one entry per step appended to that Redis stream on the progress server, the last one
named `done`: the floor of a turn's event log, without claims, checkpoints or guards.

With a `record` key too (bare_web's durable variant), each step also makes the round trips a
turnstream step needs for its guarantees, each as one plain command: note the received message,
count the delivery, claim the step, log `started`, log `finished`, save the checkpoint, uncount
the delivery: seven as plain commands, four with `fewest` (durable_step)."""

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


_broker: redis.Redis | None = None


def broker() -> redis.Redis:
    global _broker
    if _broker is None:
        _broker = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            os.environ["BROKER_REDIS_URL"], max_connections=1_000))
    return _broker


@app.task(name="noop.step")
def step(payload: dict) -> dict:
    payload.setdefault("first_started", time.time())
    if "log" in payload:
        payload["n"] = payload.get("n", 0) + 1
        last = payload["n"] == STEPS
        if "record" in payload:
            durable_step(payload["record"], payload["log"], payload["n"], last, payload.get("fewest", False))
        else:
            event_log().xadd(payload["log"], {"event": "done" if last else "step"})
    return payload


def durable_step(record: str, log: str, n: int, last: bool, fewest: bool) -> None:
    """The round trips of a step that can be claimed, counted, resumed and watched (see above).
    `fewest`: the same writes in the fewest round trips a step allows, four: what comes before
    the step's body on the broker in one transaction, `started`, `finished`, and what comes
    after it on the broker in one transaction."""
    r, progress = broker(), event_log()
    if fewest:
        r.pipeline().sadd(f"{record}:received", n).hincrby(f"{record}:deliveries", n, 1).hset(
            record, mapping={"runner": os.getpid(), "step": n}).execute()
    else:
        r.sadd(f"{record}:received", n)
        r.hincrby(f"{record}:deliveries", n, 1)
        r.hset(record, mapping={"runner": os.getpid(), "step": n})
    progress.xadd(log, {"event": "started"})
    progress.xadd(log, {"event": "done" if last else "finished"})
    if fewest:
        r.pipeline().hset(record, "next", n + 1).hincrby(f"{record}:deliveries", n, -1).execute()
    else:
        r.hset(record, "next", n + 1)
        r.hincrby(f"{record}:deliveries", n, -1)
