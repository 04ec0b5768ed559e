"""Turn status records and session ownership, on the broker instance (noeviction, AOF).

A turn is one prompt and its answer; a session is a chat of turns owned by one user."""

import json
import time

import redis

from shared import defaults, keys, metrics
from shared.redis_roles import client
from shared.settings import get_settings
from shared.tokens import Principal

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINAL_STATES = frozenset({DONE, FAILED, CANCELLED})


def claim_session(session_id: str, principal: Principal, r: redis.Redis | None = None) -> bool:
    """Make `principal` the owner of a new session; True if they own it (now or already)."""
    r = r or client("broker")
    ttl = get_settings().turn_status_ttl_s * 7
    key = keys.session_owner(session_id)
    r.set(key, principal.owner, nx=True, ex=ttl)
    return r.get(key) == principal.owner


def owns_session(session_id: str, principal: Principal, r: redis.Redis | None = None) -> bool:
    return (r or client("broker")).get(keys.session_owner(session_id)) == principal.owner


def create_turn(session_id: str, message_id: str, principal: Principal, prompt: str,
                r: redis.Redis | None = None) -> None:
    r = r or client("broker")
    ttl = get_settings().turn_status_ttl_s
    now = time.time()
    status_key = keys.turn_status(session_id, message_id)
    pipe = r.pipeline()
    pipe.hset(status_key, mapping={"session_id": session_id, "message_id": message_id, "owner": principal.owner,
                                   "prompt": prompt, "status": QUEUED, "step": "", "created_at": now,
                                   "updated_at": now})
    pipe.expire(status_key, ttl)
    pipe.rpush(keys.session_turns(session_id), message_id)
    pipe.expire(keys.session_turns(session_id), ttl * 7)
    pipe.zadd(keys.user_sessions(principal.tenant, principal.user), {session_id: now})
    pipe.expire(keys.user_sessions(principal.tenant, principal.user), ttl * 7)
    pipe.zadd(keys.turns_in_flight(), {f"{session_id}:{message_id}": now})
    pipe.execute()


def update_turn(session_id: str, message_id: str, r: redis.Redis | None = None, **fields: object) -> None:
    """Set fields on a turn's status record; a turn already in a final state keeps its status."""
    r = r or client("broker")
    key = keys.turn_status(session_id, message_id)
    values = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in fields.items()}
    values["updated_at"] = time.time()
    if "status" in values and r.hget(key, "status") in FINAL_STATES:
        values.pop("status")
    r.hset(key, mapping=values)
    if values.get("status") in FINAL_STATES:
        r.zrem(keys.turns_in_flight(), f"{session_id}:{message_id}")
        metrics.record_turn(values["status"])


def get_turn(session_id: str, message_id: str, r: redis.Redis | None = None) -> dict | None:
    record = (r or client("broker")).hgetall(keys.turn_status(session_id, message_id))
    return record or None


def session_message_ids(session_id: str, r: redis.Redis | None = None) -> list[str]:
    return (r or client("broker")).lrange(keys.session_turns(session_id), 0, -1)


def user_session_ids(principal: Principal, r: redis.Redis | None = None) -> list[str]:
    return (r or client("broker")).zrevrange(keys.user_sessions(principal.tenant, principal.user), 0, 99)


def turns_in_flight(limit: int = 100, r: redis.Redis | None = None) -> list[dict]:
    """Turns not yet final, oldest first, with their status and step (for /ops).

    Entries older than TURNS_IN_FLIGHT_MAX_AGE_S, or whose record expired, are dropped: a turn
    whose worker died without a final state must not stay "in flight" forever."""
    r = r or client("broker")
    index = keys.turns_in_flight()
    r.zremrangebyscore(index, "-inf", time.time() - defaults.TURNS_IN_FLIGHT_MAX_AGE_S)
    members = r.zrange(index, 0, limit - 1, withscores=True)
    pipe = r.pipeline(transaction=False)
    for member, _ in members:
        session_id, _, message_id = member.partition(":")
        pipe.hmget(keys.turn_status(session_id, message_id), "status", "step")
    in_flight, stale = [], []
    for (member, created), (status, step) in zip(members, pipe.execute()):
        if status is None or status in FINAL_STATES:
            stale.append(member)
            continue
        session_id, _, message_id = member.partition(":")
        in_flight.append({"session_id": session_id, "message_id": message_id, "status": status,
                          "step": step or "", "age_s": round(time.time() - created, 1)})
    if stale:
        r.zrem(index, *stale)
    return in_flight


def count_in_flight(r: redis.Redis | None = None) -> int:
    return (r or client("broker")).zcard(keys.turns_in_flight())
