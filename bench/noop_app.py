"""Baseline for bench/turn_latency.py and bench/capacity.py: a bare Celery chain of four no-op
tasks, same broker, same settings. The first task stamps when it began (`first_started`, wall
clock), the bare chain's counterpart of a turn's first event.

For bench/bare_web.py (the least an HTTP + SSE tier can add), a payload with a `log` key also
gets one entry per step appended to that Redis stream on the progress server, the last one
named `done`: the floor of a turn's event log, without claims, checkpoints or guards.

With a `record` key too (bare_web's durable variant), each step also makes the round trips a
turnstream step needs for its guarantees, each as one plain command: note the received message,
count the delivery, claim the step, log `started`, log `finished`, save the checkpoint, uncount
the delivery: seven as plain commands, four with `fewest`, two waits with `overlap` (durable_step).

Its workers keep the nice value they start with unless BARE_WORKER_NICE says otherwise (below)."""

import os
import time

import redis
from celery.signals import worker_init

from shared import nice
from shared.celery_config import make_celery

app = make_celery("noop")


@worker_init.connect
def _nice_as_asked(**_: object) -> None:
    """BARE_WORKER_NICE: 0 (the default) for the bare chain, stock Celery; bench/capacity.py gives
    the workers under bare_web.py turnstream's worker nice, as the floor of the same design."""
    nice.yield_cpu(int(os.environ.get("BARE_WORKER_NICE", "0")))
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
            durable_step(payload["record"], payload["log"], payload["n"], last, payload.get("durable", "1"))
        else:
            event_log().xadd(payload["log"], {"event": "done" if last else "step"})
    return payload


def durable_step(record: str, log: str, n: int, last: bool, mode: str) -> None:
    """The round trips of a step that can be claimed, counted, resumed and watched (see above).
    `mode` "1": each write a round trip of its own, seven. "fewest": the same writes in the fewest
    round trips a step allows, four: what comes before the step's body on the broker in one
    transaction, `started`, `finished`, and what comes after it on the broker in one transaction.
    "overlap": the same four, sent two at a time to the two servers (the broker transaction and
    the event both in flight before either answer is read), so a step waits on two round trips:
    a design no turnstream code has, measured to know what it would reach."""
    r, progress = broker(), event_log()
    before = [("SADD", f"{record}:received", n), ("HINCRBY", f"{record}:deliveries", n, 1),
              ("HSET", record, "runner", os.getpid(), "step", n)]
    after = [("HSET", record, "next", n + 1), ("HINCRBY", f"{record}:deliveries", n, -1)]
    if mode in ("overlap", "mandated"):
        both(before, ("XADD", log, "*", "event", "started"))
        if mode == "mandated" and n == 3:  # the tool call's step: the permission memo, then the execution cache
            guards()
        both(after, ("XADD", log, "*", "event", "done" if last else "finished"))
        return
    if mode == "fewest":
        transaction(r, before)
    else:
        for command in before:
            r.execute_command(*command)
    progress.xadd(log, {"event": "started"})
    progress.xadd(log, {"event": "done" if last else "finished"})
    if mode == "fewest":
        transaction(r, after)
    else:
        for command in after:
            r.execute_command(*command)


_guards: tuple[redis.Redis, redis.Redis] | None = None


def guards() -> None:
    """A tool call's two guards at their least: one read of the permission memo and one of the
    execution cache, each on its own server (as turnstream's are), both in flight at once."""
    global _guards
    if _guards is None:
        _guards = tuple(redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(os.environ[name]))
                        for name in ("AUTH_MEMO_REDIS_URL", "EXEC_CACHE_REDIS_URL"))
    memo, cache = (r.connection_pool.get_connection() for r in _guards)
    try:
        memo.send_command("MGET", "bare-memo:all", "bare-memo:tool")
        cache.send_command("GET", "bare-cache:calculator")
        memo.read_response()
        cache.read_response()
    finally:
        _guards[0].connection_pool.release(memo)
        _guards[1].connection_pool.release(cache)


def transaction(r: redis.Redis, commands: list[tuple]) -> None:
    pipe = r.pipeline()
    for command in commands:
        pipe.execute_command(*command)
    pipe.execute()


def both(on_broker: list[tuple], on_progress: tuple) -> None:
    """A transaction on the broker and one command on the progress server, both sent before
    either answer is read (redis-py's connections, used directly: its clients wait per call)."""
    pools = (broker().connection_pool, event_log().connection_pool)
    first, second = (pool.get_connection() for pool in pools)
    try:
        first.send_packed_command(first.pack_commands([("MULTI",), *on_broker, ("EXEC",)]))
        second.send_command(*on_progress)
        for _ in range(len(on_broker) + 2):
            first.read_response()
        second.read_response()
    finally:
        pools[0].release(first)
        pools[1].release(second)
