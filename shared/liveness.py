"""Which worker processes are alive, and which turns each one holds.

Every process that runs steps has an id (`host-pid-random`, a valid key part) and beats on the
broker every TURNSTREAM_HEARTBEAT_S (a sorted set scored by the last beat). A worker is known
dead when it missed three beats, or at once when it ran on this host and its pid is gone (a
prefork child killed by a signal: Celery's parent requeues its message right away, and the
step that picks it up must be able to take the turn over). While a process holds a message of a turn
(received, not yet claimed), runs one of its steps or one of its tool calls, the turn sits in
that process's set, so the turns a dead worker held are found without scanning every turn in flight.

Rejected: Celery's own worker heartbeats (worker events). They name a worker node, not the pool
process that ran a step, they are off without gossip/events, and reading them needs an event
receiver; a key per process on the broker is one ZADD a beat."""

import os
import re
import socket
import time
import uuid

import redis

from shared import keys
from shared.settings import get_settings

MISSED_BEATS = 3
_id: str | None = None


def worker_id() -> str:
    """This process's id; a forked child gets its own."""
    global _id
    if _id is None:
        host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"
        _id = keys.valid_id(f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}", "worker")
    return _id


def _forget_id_after_fork() -> None:
    global _id
    _id = None


os.register_at_fork(after_in_child=_forget_id_after_fork)


def beat(r: redis.Redis, now: float | None = None) -> None:
    r.zadd(keys.worker_heartbeats(), {worker_id(): time.time() if now is None else now})


def dead_before(now: float | None = None) -> float:
    """A worker whose last beat is older than this is dead."""
    return (time.time() if now is None else now) - MISSED_BEATS * get_settings().beat_s


def gone_from_this_host(worker: str) -> bool:
    """True if `worker` ran on this host and its process no longer exists."""
    host, _, rest = worker.partition("-")
    pid_text = rest.partition("-")[0]
    if host != worker_id().partition("-")[0] or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def is_dead(worker: str | None, r: redis.Redis, now: float | None = None) -> bool:
    if not worker:
        return True
    if worker == worker_id():
        return False
    if gone_from_this_host(worker):
        return True
    last = r.zscore(keys.worker_heartbeats(), worker)
    return last is None or last < dead_before(now)


def dead_workers(r: redis.Redis, now: float | None = None) -> list[str]:
    """Every worker that beat once and is dead now (missed beats, or its pid is gone here)."""
    limit = dead_before(now)
    return [worker for worker, last in r.zrange(keys.worker_heartbeats(), 0, -1, withscores=True)
            if worker != worker_id() and (last < limit or gone_from_this_host(worker))]


RECEIVED = "@received"


def received_all(turns: list[tuple[str, str]], r: redis.Redis) -> None:
    """This process took these messages (session id, message id) of their turns off the queue:
    should it die before their steps claim the turns, the turns are sent again (nothing else
    knows where those messages went). One command for all of them."""
    r.sadd(keys.worker_turns(worker_id()),
           *(f"{keys.in_flight_member(session_id, message_id)}:{RECEIVED}" for session_id, message_id in turns))


def has_received(worker: str, session_id: str, message_id: str, r: redis.Redis) -> bool:
    return bool(r.sismember(keys.worker_turns(worker), f"{keys.in_flight_member(session_id, message_id)}:{RECEIVED}"))


def turns_of(worker: str, r: redis.Redis) -> list[tuple[str, str]]:
    """The turns `worker` runs a step of (members `session:message`) or a tool call of (`session:message:call`)."""
    members = r.smembers(keys.worker_turns(worker))
    return sorted({tuple(member.split(":")[:2]) for member in members})


def forget(worker: str, r: redis.Redis) -> None:
    """Drop a dead worker once its turns were taken care of."""
    pipe = r.pipeline()
    pipe.delete(keys.worker_turns(worker))
    pipe.zrem(keys.worker_heartbeats(), worker)
    pipe.execute()
