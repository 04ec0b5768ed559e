"""Turn status records and session ownership, on the broker instance (noeviction, AOF).

A turn is one prompt and its answer; a session is a chat of turns owned by one user.
Status changes are atomic (one Lua script): a turn that reached done, failed or cancelled
keeps that status, so a redelivered step or a late worker cannot undo a cancellation or
write a second answer."""

import json
import time

import redis

from shared import defaults, keys, metrics
from shared.redis_roles import client, replicated
from shared.settings import get_settings
from shared.tokens import Principal

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINAL_STATES = frozenset({DONE, FAILED, CANCELLED})

# KEYS: status hash, activity set, in-flight set. ARGV: new status, member, now, then field/value pairs.
# Returns the status after the call. A final status leaves both sets; any other refreshes the activity.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return false end
if current == 'done' or current == 'failed' or current == 'cancelled' then return current end
local fields = {'status', ARGV[1]}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
if ARGV[1] == 'done' or ARGV[1] == 'failed' or ARGV[1] == 'cancelled' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
else
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
end
return ARGV[1]
"""


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
                r: redis.Redis | None = None, payload: dict | None = None) -> None:
    """Record a new turn as queued and in flight. `payload` is what its chain is sent with,
    kept so that a turn whose messages were lost can be sent again (shared.redelivery)."""
    ttl = get_settings().turn_status_ttl_s
    now = time.time()
    status_key = keys.turn_status(session_id, message_id)
    with replicated("broker", r) as one:
        _record(one, session_id, message_id, principal, prompt, payload, status_key, now, ttl)


def _record(r: redis.Redis, session_id: str, message_id: str, principal: Principal, prompt: str,
            payload: dict | None, status_key: str, now: float, ttl: int) -> None:
    pipe = r.pipeline()
    pipe.hset(status_key, mapping={"session_id": session_id, "message_id": message_id, "owner": principal.owner,
                                   "prompt": prompt, "status": QUEUED, "step": "", "created_at": now,
                                   "updated_at": now, "payload": json.dumps(payload or {})})
    pipe.expire(status_key, ttl)
    pipe.zadd(keys.turn_activity(), {keys.in_flight_member(session_id, message_id): now})
    pipe.rpush(keys.session_turns(session_id), message_id)
    pipe.expire(keys.session_turns(session_id), ttl * 7)
    pipe.zadd(keys.user_sessions(principal.tenant, principal.user), {session_id: now})
    pipe.expire(keys.user_sessions(principal.tenant, principal.user), ttl * 7)
    pipe.zadd(keys.turns_in_flight(), {f"{session_id}:{message_id}": now})
    pipe.execute()


def discard_turn(session_id: str, message_id: str, r: redis.Redis | None = None,
                 wait_s: float = defaults.DISCARD_WAIT_S) -> None:
    """Forget a turn that was recorded but could not be enqueued (the client gets a 503).

    The broker may be down at that moment (that is usually why the send failed), and a turn
    left behind would be sent later by the redelivery sweeper although its client was told
    no: so this keeps trying for `wait_s` (long enough for a Sentinel failover), then raises."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return _discard(session_id, message_id, r)
        except redis.RedisError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.25)


def _discard(session_id: str, message_id: str, r: redis.Redis | None) -> None:
    with replicated("broker", r) as one:
        _forget(one, session_id, message_id)


def _forget(r: redis.Redis, session_id: str, message_id: str) -> None:
    pipe = r.pipeline()
    pipe.delete(keys.turn_status(session_id, message_id))
    pipe.lrem(keys.session_turns(session_id), 0, message_id)
    pipe.zrem(keys.turn_activity(), keys.in_flight_member(session_id, message_id))
    pipe.zrem(keys.turns_in_flight(), keys.in_flight_member(session_id, message_id))
    pipe.execute()


def update_turn(session_id: str, message_id: str, r: redis.Redis | None = None, **fields: object) -> str | None:
    """Move a turn to `status` and set `fields`, unless it is already final (then nothing changes).

    Returns the status the turn has afterwards (None if there is no such turn), so a caller
    can tell whether its own transition won."""
    r = r or client("broker")
    status = str(fields.pop("status", "") or "")
    now = time.time()
    values = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in fields.items()}
    values["updated_at"] = now
    flat = [str(item) for pair in values.items() for item in pair]
    if not status:
        current = r.hget(keys.turn_status(session_id, message_id), "status")
        if current is None or current in FINAL_STATES:
            return current
        status = current
    result = r.register_script(_TRANSITION)(
        keys=[keys.turn_status(session_id, message_id), keys.turn_activity(), keys.turns_in_flight()],
        args=[status, keys.in_flight_member(session_id, message_id), now, *flat])
    if result == status and status in FINAL_STATES:
        metrics.record_turn(status)
    return result


def turn_status(session_id: str, message_id: str, r: redis.Redis | None = None) -> str | None:
    return (r or client("broker")).hget(keys.turn_status(session_id, message_id), "status")


def cancel_turn(session_id: str, message_id: str, r: redis.Redis | None = None) -> str | None:
    """Mark the turn cancelled unless it already ended; returns its status afterwards."""
    return update_turn(session_id, message_id, r, status=CANCELLED, step="")


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
