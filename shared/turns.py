"""Turn records and session ownership, on the broker instance (noeviction, AOF).

A turn is one prompt and its answer; a session is a chat of turns owned by one user. A turn's
record is a Redis hash that only TurnRecord reads and writes (`restore` / `to_hash`, as rq's
Job does), so no caller parses a raw hash. Status changes are atomic (one Lua script): a turn
that reached a final status keeps it, so a redelivered step or a late worker cannot undo a
cancellation or write a second answer.

A turn is durable: after each step its record keeps a checkpoint (the state the next step runs
on, and which step that is) written in the same script as the step's status change, and the
worker process running its current step (`runner`, shared.liveness). A delivery of a step the
turn has moved past is stale; one whose step a live worker runs is a duplicate; either does
nothing, so a redelivered or re-sent turn resumes at its last finished step and a finished
reasoner call is not made again.

Turns not yet final sit in one in-flight index (a sorted set scored by each turn's last status
change): /ops lists it, and the redelivery sweeper (workers.redelivery) resends the turns whose
score has not moved for a visibility timeout.

Ownership cannot lapse or pass to someone else: the owner key is written with the session's
data and its lifetime is refreshed with every write of that data (`session_ttl_s`), so it
outlives the turns list and the history. A session whose owner key is gone while any of its
data remains is claimable by nobody until that data has expired or been deleted. Rejected:
refreshing the owner key on reads, which would let data outlive it on a quiet session."""

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import redis

from shared import defaults, keys, liveness, metrics
from shared.identity import Principal
from shared.redis_stores import client, master_only, replicated
from shared.settings import get_settings
from shared.turn_flow import Checkpoint, TurnPayload
from shared.vocabulary import CANCELLED, DONE, FINAL_STATUSES, QUEUED, TurnStatus

CLOCK_SKEW_S = 2.0  # between worker hosts' clocks, on top of a step's time limit (claim_step)
_FINAL_LUA = "{" + ", ".join(f"['{status}'] = true" for status in sorted(FINAL_STATUSES)) + "}"

# A status change, in one place for both scripts that make it: the status after the call, and
# whether this call changed it. `args`: new status, in-flight member, now; field/value pairs from
# `first`. A final status leaves the index; any other refreshes its score.
_TRANSITION_LUA = f"""
local function transition(record, index, args, first)
  local final = {_FINAL_LUA}
  local current = redis.call('HGET', record, 'status')
  if not current then return false, false end
  if final[current] then return current, false end
  local fields = {{'status', args[1]}}
  for i = first, #args do fields[#fields + 1] = args[i] end
  redis.call('HSET', record, unpack(fields))
  if final[args[1]] then
    redis.call('ZREM', index, args[2])
  else
    redis.call('ZADD', index, args[3], args[2])
  end
  return args[1], true
end
"""

# KEYS: record hash, in-flight index. ARGV: new status, member, now, then field/value pairs.
# Returns the status after the call.
_TRANSITION = master_only(_TRANSITION_LUA + """
local status = transition(KEYS[1], KEYS[2], ARGV, 4)
return status
""")

# KEYS: record hash, in-flight index, the session's history, its owner key. ARGV: `done`, member,
# now, history entry, entries kept, session ttl, then field/value pairs (the answer). Returns {the status
# after the call, 1 if this call made the turn done}. The turn's
# answer and its history entry in one round trip; only the call that makes the turn done writes
# the entry, so a history never holds an answer twice, nor one its turn's record lacks.
_FINISH = master_only(_TRANSITION_LUA + """
local status, changed = transition(KEYS[1], KEYS[2], ARGV, 7)
if changed and tonumber(ARGV[5]) > 0 then
  redis.call('RPUSH', KEYS[3], ARGV[4])
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[5]), -1)
  redis.call('EXPIRE', KEYS[3], ARGV[6])
  redis.call('EXPIRE', KEYS[4], ARGV[6])
end
return {status, changed and 1 or 0}
""")


# KEYS: record hash, in-flight index, heartbeats, the runner's worker-turns set, the turn's delivery counts.
# ARGV: position, latest next position still run, worker, step, now, dead_before, known-dead worker, member,
# held_until, the delivery's tag ('' for none) and the counts' ttl. Returns {status, runner or false, the
# deliveries of this tag that died before (false when not counted)}: the status ('running' once claimed), or 'stale' (the turn moved past this step: its
# runner follows when that runner is dead and held this step or a later one its task ran,
# workers.steps.step_here, so the caller can send the turn on), or 'held' (a live worker runs this step).
# A runner holds a step only while it is alive and until `held_until`, which its claim set to one step
# time limit (its own) from then: past that its step cannot still be running (the limit ends it), yet
# a live runner can be left in the record by writes a failover lost (the demoted master took the
# turn's later progress with it), and honouring it would strand the turn. A step that hands its
# message back lets go at once (let_go).
_CLAIM_STEP = master_only(f"""
local final = {_FINAL_LUA}
local f = redis.call('HMGET', KEYS[1], 'status', 'next_pos', 'runner', 'runner_pos', 'held_until')
local status, next_pos, runner, runner_pos = f[1], tonumber(f[2] or ''), f[3], tonumber(f[4] or '')
if not status then return {{false, false, false}} end
local crashes = false
if ARGV[10] ~= '' then
  crashes = redis.call('HINCRBY', KEYS[5], ARGV[10], 1) - 1
  redis.call('EXPIRE', KEYS[5], ARGV[11])
end
if final[status] then return {{status, false, crashes}} end
local live = false
if runner and runner ~= ARGV[3] and runner ~= ARGV[7] and tonumber(f[5] or '0') >= tonumber(ARGV[5]) then
  local last = redis.call('ZSCORE', KEYS[3], runner)
  live = last and tonumber(last) >= tonumber(ARGV[6])
end
if next_pos and next_pos > tonumber(ARGV[2]) then
  if runner and not live and runner_pos and runner_pos >= tonumber(ARGV[1]) then return {{'stale', runner, crashes}} end
  return {{'stale', false, crashes}}
end
if live and runner_pos and runner_pos >= tonumber(ARGV[1]) then return {{'held', false, crashes}} end
redis.call('HSET', KEYS[1], 'status', 'running', 'step', ARGV[4], 'runner', ARGV[3], 'runner_pos', ARGV[1],
           'updated_at', ARGV[5], 'held_until', ARGV[9])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[8])
redis.call('SADD', KEYS[4], ARGV[8])
return {{'running', false, crashes}}
""")

# KEYS: record hash, in-flight index. ARGV: position, worker, checkpoint JSON, next task, next round,
# next position, now, member, the events held to show with the next step (JSON, '' for none), and
# optionally the next step and its held_until. 'saved', or 'lost'
# when another worker took the step over (this one was taken for dead): its result is then dropped.
# With a next step, the same worker also claims the checkpoint's position for it, which is what
# _CLAIM_STEP would do there and then: the turn is not final, its runner is this worker and
# nothing is past the position just saved (a step run next in the same task: one round trip).
_ADVANCE = master_only(f"""
local final = {_FINAL_LUA}
local f = redis.call('HMGET', KEYS[1], 'status', 'runner', 'next_pos')
if not f[1] then return false end
if final[f[1]] then return f[1] end
if f[2] ~= ARGV[2] or tonumber(f[3] or '-1') > tonumber(ARGV[1]) then return 'lost' end
redis.call('HSET', KEYS[1], 'checkpoint', ARGV[3], 'next_task', ARGV[4], 'next_round', ARGV[5],
           'next_pos', ARGV[6], 'updated_at', ARGV[7], 'next_shown', ARGV[9])
if ARGV[10] then
  redis.call('HSET', KEYS[1], 'status', 'running', 'step', ARGV[10], 'runner_pos', ARGV[6], 'held_until', ARGV[11])
end
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[8])
return 'saved'
""")

# KEYS: record hash. ARGV: worker. The runner's hold ends now (its runner stays named, so a delivery
# that finds the turn past its step sends it on from the checkpoint: 'stale' with the runner).
_LET_GO = master_only("""
if redis.call('HGET', KEYS[1], 'runner') == ARGV[1] then redis.call('HSET', KEYS[1], 'held_until', 0) end
return 0
""")

# KEYS: record hash, the worker's turns set. ARGV: worker, member, position. The runner lets go of
# the turn (once the next step is sent); nothing changes if another step (of any process) runs it by now.
_RELEASE = master_only("""
local f = redis.call('HMGET', KEYS[1], 'runner', 'runner_pos')
if f[1] == ARGV[1] and f[2] == ARGV[3] then
  redis.call('HDEL', KEYS[1], 'runner', 'runner_pos')
  redis.call('SREM', KEYS[2], ARGV[2])
end
return 1
""")


# KEYS: the worker's turns set, then one record hash per member. ARGV: worker, then per member the
# member and 1 if it marks a received message (0 for a step). Removes, in one go, every member
# whose turn moved on: gone or final; a step whose runner is another worker now; a received
# message whose step claimed the turn here. Returns how many it removed. Atomic, so a step this
# worker claims again meanwhile (the same member) is not dropped between a read and a write.
_FORGET_MOVED = master_only(f"""
local final = {_FINAL_LUA}
local removed = 0
for i = 2, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'status', 'runner')
  local received = ARGV[2 * i - 1] == '1'
  local here = f[2] == ARGV[1]
  if not f[1] or final[f[1]] or (received and here) or (not received and not here) then
    removed = removed + redis.call('SREM', KEYS[1], ARGV[2 * i - 2])
  end
end
return removed
""")
FORGET_BATCH = 200


@dataclass(frozen=True)
class TurnRecord:
    """A turn as its record holds it. `payload` is what its chain was sent with (None for a
    record written without one)."""

    status: TurnStatus
    session_id: str = ""
    message_id: str = ""
    owner: str = ""
    prompt: str = ""
    step: str = ""
    answer: str | None = None
    error: str | None = None
    created_at: float | None = None
    updated_at: float | None = None
    payload: TurnPayload | None = None
    redeliveries: int = 0
    checkpoint: Checkpoint | None = None
    runner: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @classmethod
    def restore(cls, fields: dict[str, str]) -> "TurnRecord":
        """A record from its hash (as redis-py returns it, decoded)."""
        def number(name: str) -> float | None:
            return float(fields[name]) if fields.get(name) else None

        return cls(status=fields["status"], session_id=fields.get("session_id", ""),
                   message_id=fields.get("message_id", ""), owner=fields.get("owner", ""),
                   prompt=fields.get("prompt", ""), step=fields.get("step", ""), answer=fields.get("answer"),
                   error=fields.get("error"), created_at=number("created_at"), updated_at=number("updated_at"),
                   payload=json.loads(fields.get("payload") or "null") or None,
                   redeliveries=int(fields.get("redeliveries") or 0), runner=fields.get("runner") or None,
                   checkpoint=Checkpoint(fields["next_task"], int(fields["next_round"]) if fields.get("next_round") else None,
                                         json.loads(fields["checkpoint"]),
                                         tuple(tuple(held) for held in json.loads(fields.get("next_shown") or "[]")))
                   if fields.get("checkpoint") else None)

    def to_hash(self) -> dict[str, str | float]:
        """The hash fields of a new record (later changes go through `update_turn`)."""
        fields: dict[str, Any] = {"session_id": self.session_id, "message_id": self.message_id, "owner": self.owner,
                                  "prompt": self.prompt, "status": self.status, "step": self.step,
                                  "created_at": self.created_at, "updated_at": self.updated_at,
                                  "payload": json.dumps(self.payload or {})}
        fields.update({name: getattr(self, name) for name in ("answer", "error") if getattr(self, name) is not None})
        return {name: value for name, value in fields.items() if value is not None}

    def public(self) -> dict[str, Any]:
        """The turn as the API shows it (web.schemas.Turn): no owner, no payload."""
        shown = {"session_id": self.session_id, "message_id": self.message_id, "status": self.status,
                 "step": self.step, "prompt": self.prompt, "answer": self.answer, "error": self.error,
                 "created_at": self.created_at, "updated_at": self.updated_at}
        return {name: value for name, value in shown.items() if value is not None}
# The session claim, in one place for both scripts that make it: the session's owner after the
# call (false for an orphan: data without an owner key, which nobody may claim while it lives).
_CLAIM_OWNER_LUA = """
local function claim_owner(owner_key, turns_key, history_key, owner, ttl)
  local current = redis.call('GET', owner_key)
  if current then return current end
  if redis.call('EXISTS', turns_key, history_key) > 0 then return false end
  redis.call('SET', owner_key, owner, 'EX', ttl)
  return owner
end
"""

# KEYS: owner, turns list, history. ARGV: owner, ttl. Returns the session's owner after the call.
_CLAIM = master_only(_CLAIM_OWNER_LUA + """
return claim_owner(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])
""")


def session_ttl_s() -> int:
    """How long a session's owner key, turns list and history live after its last write."""
    return get_settings().turn_status_ttl_s * 7


def session_data_keys(session_id: str) -> list[str]:
    """The keys a session's owner key must outlive."""
    return [keys.session_turns(session_id), keys.session_history(session_id)]


def claim_session(session_id: str, principal: Principal, r: redis.Redis | None = None) -> bool:
    """Make `principal` the owner of a new session; True if they own it (now or already)."""
    r = r or client("broker")
    owner = r.register_script(_CLAIM)(keys=[keys.session_owner(session_id), *session_data_keys(session_id)],
                                      args=[principal.owner, session_ttl_s()])
    return owner == principal.owner


def owns_session(session_id: str, principal: Principal, r: redis.Redis | None = None) -> bool:
    return (r or client("broker")).get(keys.session_owner(session_id)) == principal.owner


# KEYS: owner, turns list, history, record hash, in-flight index, the user's sessions.
# ARGV: claim the session first (1/0), owner, session ttl, turn ttl, now, in-flight member, message
# id, session id, then the record's fields and values. Returns 'created', 'exists' (a turn with this
# id: nothing written) or 'not_owner' (claiming, the session is someone else's or an orphan, as
# _CLAIM). One round trip for what a POST records: the session's owner, the turn, the indexes.
_CREATE = master_only(_CLAIM_OWNER_LUA + """
if ARGV[1] == '1' and claim_owner(KEYS[1], KEYS[2], KEYS[3], ARGV[2], ARGV[3]) ~= ARGV[2] then
  return 'not_owner'
end
-- Claim the id first: a client may choose its ids (AG-UI's runId), and a second post of the
-- same id must not overwrite a turn under way.
if redis.call('HSETNX', KEYS[4], 'owner', ARGV[2]) == 0 then return 'exists' end
redis.call('HSET', KEYS[4], unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[4], ARGV[4])
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[6])
redis.call('RPUSH', KEYS[2], ARGV[7])
-- The owner key's lifetime is renewed with the data it guards.
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[6], ARGV[5], ARGV[8])
redis.call('EXPIRE', KEYS[6], ARGV[3])
return 'created'
""")
CREATED, EXISTS, NOT_OWNER = "created", "exists", "not_owner"


def create_turn(session_id: str, message_id: str, principal: Principal, prompt: str,
                r: redis.Redis | None = None, payload: TurnPayload | None = None) -> bool:
    """Record a new turn as queued and in flight; False (and nothing written) if a turn with this
    id exists. `payload` is what its chain is sent with, kept so that a turn whose messages were
    lost can be sent again (workers.redelivery)."""
    return start_turn(session_id, message_id, principal, prompt, payload, claim=False, r=r) == CREATED


def start_turn(session_id: str, message_id: str, principal: Principal, prompt: str,
               payload: TurnPayload | None = None, claim: bool = True, r: redis.Redis | None = None) -> str:
    """claim_session and create_turn in one round trip: CREATED, EXISTS (nothing written) or
    NOT_OWNER (the session is someone else's: nothing written)."""
    now = time.time()
    record = TurnRecord(status=QUEUED, session_id=session_id, message_id=message_id, owner=principal.owner,
                        prompt=prompt, created_at=now, updated_at=now, payload=payload)
    fields = [item for pair in record.to_hash().items() for item in pair]
    outcome = ""

    def take_back(one: redis.Redis) -> None:  # refused (the broker is being replaced): leave nothing
        if outcome == CREATED:
            _forget(one, session_id, message_id)
    with replicated("broker", r, undo=take_back) as one:
        outcome = one.register_script(_CREATE)(
            keys=[keys.session_owner(session_id), *session_data_keys(session_id),
                  keys.turn_record(session_id, message_id), keys.turns_in_flight(),
                  keys.user_sessions(principal.tenant, principal.user)],
            args=[int(claim), principal.owner, session_ttl_s(), get_settings().turn_status_ttl_s, now,
                  keys.in_flight_member(session_id, message_id), message_id, session_id, *fields])
    return outcome


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
    pipe.delete(keys.turn_record(session_id, message_id))
    pipe.lrem(keys.session_turns(session_id), 0, message_id)
    pipe.zrem(keys.turns_in_flight(), keys.in_flight_member(session_id, message_id))
    pipe.execute()


def update_turn(session_id: str, message_id: str, r: redis.Redis | None = None, **fields: str) -> str | None:
    """Move a turn to `status` and set `fields`, unless it is already final (then nothing changes).

    Returns the status the turn has afterwards (None if there is no such turn), so a caller
    can tell whether its own transition won."""
    r = r or client("broker")
    status = str(fields.pop("status", "") or "")
    now = time.time()
    values = {**fields, "updated_at": now}
    flat = [str(item) for pair in values.items() for item in pair]
    if not status:
        current = r.hget(keys.turn_record(session_id, message_id), "status")
        if current is None or current in FINAL_STATUSES:
            return current
        status = current
    result = r.register_script(_TRANSITION)(
        keys=[keys.turn_record(session_id, message_id), keys.turns_in_flight()],
        args=[status, keys.in_flight_member(session_id, message_id), now, *flat])
    if result == status and status in FINAL_STATUSES:
        metrics.record_turn(status)
    return result


def finish_turn(session_id: str, message_id: str, answer: str, history_entry: str, keep: int,
                r: redis.Redis | None = None) -> tuple[str | None, bool]:
    """Move a turn to `done` with its answer and, if this call did it, append `history_entry`
    to the session's history, keeping its last `keep` entries (shared.history encodes them).
    Returns the status afterwards (None: no such turn) and whether this call made it `done`."""
    r = r or client("broker")
    now = time.time()
    status, changed = r.register_script(_FINISH)(
        keys=[keys.turn_record(session_id, message_id), keys.turns_in_flight(), keys.session_history(session_id),
              keys.session_owner(session_id)],
        args=[DONE, keys.in_flight_member(session_id, message_id), now, history_entry, keep, session_ttl_s(),
              "answer", answer, "updated_at", now])
    if changed:
        metrics.record_turn(DONE)
    return status, bool(changed)


def cancel_turn(session_id: str, message_id: str, r: redis.Redis | None = None) -> str | None:
    """Mark the turn cancelled unless it already ended; returns its status afterwards."""
    return update_turn(session_id, message_id, r, status=CANCELLED, step="")


def turn_status(session_id: str, message_id: str, r: redis.Redis | None = None) -> str | None:
    """The turn's status alone (one HGET: streams ask at every heartbeat); None if there is no such turn."""
    return (r or client("broker")).hget(keys.turn_record(session_id, message_id), "status")


def turn_step(session_id: str, message_id: str, r: redis.Redis | None = None) -> str | None:
    """The step the turn runs or last ran (claim_step writes it), whichever task runs it; None if
    there is no such turn or it has not started."""
    return (r or client("broker")).hget(keys.turn_record(session_id, message_id), "step") or None


def turn_statuses(ids: list[tuple[str, str]], r: redis.Redis | None = None) -> list[str | None]:
    """The statuses of many turns in one round trip (a web process's streams, at each beat)."""
    pipe = (r or client("broker")).pipeline(transaction=False)
    for session_id, message_id in ids:
        pipe.hget(keys.turn_record(session_id, message_id), "status")
    return pipe.execute()


def get_turn(session_id: str, message_id: str, r: redis.Redis | None = None) -> TurnRecord | None:
    fields = (r or client("broker")).hgetall(keys.turn_record(session_id, message_id))
    return TurnRecord.restore(fields) if fields else None


def session_message_ids(session_id: str, r: redis.Redis | None = None) -> list[str]:
    return (r or client("broker")).lrange(keys.session_turns(session_id), 0, -1)


def user_session_ids(principal: Principal, r: redis.Redis | None = None) -> list[str]:
    return (r or client("broker")).zrevrange(keys.user_sessions(principal.tenant, principal.user), 0, 99)


def in_flight_ids(r: redis.Redis, until: float = float("inf"), limit: int = 100) -> list[tuple[str, str]]:
    """(session, message) of unfinished turns whose last status change is no later than
    `until`, least recently moved first."""
    members = r.zrangebyscore(keys.turns_in_flight(), "-inf", until, start=0, num=limit)
    return [(session_id, message_id) for session_id, _, message_id in (m.partition(":") for m in members)]


def leave_in_flight(session_id: str, message_id: str, r: redis.Redis) -> None:
    r.zrem(keys.turns_in_flight(), keys.in_flight_member(session_id, message_id))


def touch_in_flight(session_id: str, message_id: str, now: float, r: redis.Redis) -> None:
    """Count `now` as the turn's last movement (a resend starts the wait over)."""
    r.zadd(keys.turns_in_flight(), {keys.in_flight_member(session_id, message_id): now})


def turns_in_flight(limit: int = 100, r: redis.Redis | None = None, stall_s: float | None = None) -> list[dict]:
    """Turns not yet final, least recently moved first, with their status, step, age, the seconds
    since their status last changed (`idle_s`) and whether that exceeds `stall_s` (`stalled`; for /ops).

    Entries whose record expired or is final are dropped here: the index must not keep a turn
    "in flight" forever. A turn that stalls instead is resent, then failed, by workers.redelivery."""
    r = r or client("broker")
    stall_s = get_settings().stall_s if stall_s is None else stall_s
    ids = in_flight_ids(r, limit=limit)
    pipe = r.pipeline(transaction=False)
    for session_id, message_id in ids:
        pipe.hmget(keys.turn_record(session_id, message_id), "status", "step", "created_at", "updated_at")
    in_flight, stale = [], []
    now = time.time()
    for (session_id, message_id), (status, step, created_at, updated_at) in zip(ids, pipe.execute()):
        if status is None or status in FINAL_STATUSES:
            stale.append(keys.in_flight_member(session_id, message_id))
            continue
        idle_s = round(now - float(updated_at or created_at or now), 1)
        in_flight.append({"session_id": session_id, "message_id": message_id, "status": status, "step": step or "",
                          "age_s": round(now - float(created_at or now), 1), "idle_s": idle_s,
                          "stalled": idle_s > stall_s})
    if stale:
        r.zrem(keys.turns_in_flight(), *stale)
    return in_flight


def count_in_flight(r: redis.Redis | None = None) -> int:
    return (r or client("broker")).zcard(keys.turns_in_flight())


def count_stalled(stall_s: float | None = None, now: float | None = None, r: redis.Redis | None = None) -> int:
    """Unfinished turns whose status has not changed for longer than `stall_s` (TURNSTREAM_STALL_S).

    The in-flight index is scored by each turn's last status change, and every step records its
    start, so this counts turns whose current step has run (or waited) longer than the limit."""
    stall_s = get_settings().stall_s if stall_s is None else stall_s
    now = time.time() if now is None else now
    return (r or client("broker")).zcount(keys.turns_in_flight(), "-inf", now - stall_s)


# --- Checkpoints: claiming a step, saving what it left, letting go ----------------------------------

def claim_step(session_id: str, message_id: str, step: str, position: int, latest: int | None = None,
               r: redis.Redis | None = None) -> tuple[str | None, str | None]:
    """Make this worker process the runner of the turn's step at `position`. Returns the status
    ('running' when claimed, a final status, 'stale', 'held' or None for no such turn) and, for a
    stale delivery whose runner died after finishing the step, that runner."""
    status, orphaned_by, _ = claim_step_counting(session_id, message_id, step, position, latest, r=r)
    return status, orphaned_by


def claim_step_counting(session_id: str, message_id: str, step: str, position: int, latest: int | None = None,
                        count: str | None = None, on_counted: Callable[[], None] | None = None,
                        r: redis.Redis | None = None) -> tuple[str | None, str | None, int | None]:
    """claim_step, counting the task's delivery under the tag `count` in the same script
    (shared.deliveries): its third value is how many deliveries of that tag died before, or None
    when nothing was counted (no `count`, or no such turn). `on_counted` runs as soon as the
    script counted, before any further round trip that could fail and be retried."""
    r = r or client("broker")
    status, orphaned_by, crashes = _claim_step(r, session_id, message_id, step, position, latest, "", count or "")
    if crashes is not None and on_counted is not None:
        on_counted()
    if status in ("held", "stale") and orphaned_by is None:
        # A live-looking runner stood in the way. One that ran on this host and whose process is
        # gone is dead whatever its heartbeat says (a restarted worker beats under a new id before
        # the sweep notices the old one): ask again naming it. Only this rare path reads the
        # runner first; the script answers 'running' the same either way.
        runner = r.hget(keys.turn_record(session_id, message_id), "runner")
        if runner and liveness.gone_from_this_host(runner):
            status, orphaned_by, _ = _claim_step(r, session_id, message_id, step, position, latest, runner, "")
    return status, orphaned_by, crashes


def _claim_step(r: redis.Redis, session_id: str, message_id: str, step: str, position: int, latest: int | None,
                known_dead: str, count: str) -> tuple[str | None, str | None, int | None]:
    worker = liveness.worker_id()
    now = time.time()
    held_until = now + get_settings().task_time_limit_s + CLOCK_SKEW_S  # this worker's hard limit
    status, orphaned_by, crashes = r.register_script(_CLAIM_STEP)(
        keys=[keys.turn_record(session_id, message_id), keys.turns_in_flight(), keys.worker_heartbeats(),
              keys.worker_turns(worker), keys.turn_deliveries(session_id, message_id)],
        args=[position, position if latest is None else latest, worker, step, now, liveness.dead_before(now),
              known_dead, keys.in_flight_member(session_id, message_id), held_until,
              keys.valid_step_tag(count) if count else "", get_settings().turn_status_ttl_s])
    return status, orphaned_by, crashes


def let_go(session_id: str, message_id: str, r: redis.Redis | None = None, worker: str | None = None) -> None:
    """`worker` (this process) handed its step's message back: it no longer holds the step, so the
    next delivery takes it over at once, in whichever process, and follows a checkpoint it saved."""
    (r or client("broker")).register_script(_LET_GO)(keys=[keys.turn_record(session_id, message_id)],
                                                     args=[worker or liveness.worker_id()])


def save_checkpoint(session_id: str, message_id: str, position: int, checkpoint: Checkpoint,
                    r: redis.Redis | None = None, claim_next: str | None = None) -> str | None:
    """Record what the step at `position` (the latest position it may run at) left for the next
    one, if this process still runs it. `claim_next`: the step this process runs next, at the
    checkpoint's position, claimed in the same script (as claim_step would, with 'running')."""
    r = r or client("broker")
    now = time.time()
    claim = [claim_next, now + get_settings().task_time_limit_s + CLOCK_SKEW_S] if claim_next else []
    return r.register_script(_ADVANCE)(
        keys=[keys.turn_record(session_id, message_id), keys.turns_in_flight()],
        args=[position, liveness.worker_id(), json.dumps(checkpoint.state), checkpoint.task, checkpoint.round or "",
              checkpoint.position, now, keys.in_flight_member(session_id, message_id),
              json.dumps(checkpoint.shown) if checkpoint.shown else "", *claim])


def release_step(session_id: str, message_id: str, position: int, r: redis.Redis | None = None) -> None:
    """This process no longer runs the turn's step at `position`."""
    r = r or client("broker")
    worker = liveness.worker_id()
    r.register_script(_RELEASE)(keys=[keys.turn_record(session_id, message_id), keys.worker_turns(worker)],
                                args=[worker, keys.in_flight_member(session_id, message_id), position])


def forget_moved(worker: str, members: list[tuple[str, str, str, bool]], r: redis.Redis | None = None) -> int:
    """Drop from `worker`'s turns set the members (member, session id, message id, received?)
    whose turn moved on (_FORGET_MOVED), FORGET_BATCH per round trip; returns how many."""
    r = r or client("broker")
    removed = 0
    for start in range(0, len(members), FORGET_BATCH):
        batch = members[start:start + FORGET_BATCH]
        removed += r.register_script(_FORGET_MOVED)(
            keys=[keys.worker_turns(worker), *(keys.turn_record(sid, mid) for _, sid, mid, _ in batch)],
            args=[worker, *(item for member, _, _, received in batch for item in (member, int(received)))])
    return removed
