"""The tool-call journal: each call of a turn, by call id, on the broker (noeviction, AOF).

A call is written down before it runs (`started`, by which worker process) and after it ends
(its outcome). So a redelivered or re-sent `call_tool`:
- finds the outcome and returns it without calling the tool (the first outcome recorded wins);
- finds it `started` by a live worker and waits for that outcome instead of running it twice;
- finds it `started` by a dead worker and runs it again: a read-only tool simply runs again; any
  other was sent with the idempotency key `turn + call id` (workers.mcp.meta) and is sent again
  with the same key, so a tool that honours the key acts once.

Two hash fields per call (`<call id>:started`, `<call id>:outcome`), so the scripts below never
parse a tool's result. Rejected: the execution cache for this. It is shared across turns, may
evict, and never holds side effects, which are the very calls that need the journal."""

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import redis

from shared import keys, liveness
from shared.redis_stores import client, master_only
from shared.settings import get_settings

# KEYS: journal, heartbeats, this worker's turns set, the turn's delivery counts. ARGV: call id, worker, now,
# dead_before, known-dead worker, ttl s, member, the delivery's tag ('' for none). Returns {'done', outcome,
# crashes} | {'wait', holder, crashes} | {'run', previous holder or '', crashes}, where crashes counts the
# deliveries of the tag that died before (shared.deliveries; false when not counted).
_BEGIN = master_only("""
local crashes = false
if ARGV[8] ~= '' then
  crashes = redis.call('HINCRBY', KEYS[4], ARGV[8], 1) - 1
  redis.call('EXPIRE', KEYS[4], ARGV[6])
end
local outcome = redis.call('HGET', KEYS[1], ARGV[1] .. ':outcome')
if outcome then return {'done', outcome, crashes} end
local started = redis.call('HGET', KEYS[1], ARGV[1] .. ':started')
if started and started ~= ARGV[2] and started ~= ARGV[5] then
  local last = redis.call('ZSCORE', KEYS[2], started)
  if last and tonumber(last) >= tonumber(ARGV[4]) then return {'wait', started, crashes} end
end
redis.call('HSET', KEYS[1], ARGV[1] .. ':started', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('SADD', KEYS[3], ARGV[7])
return {'run', started or '', crashes}
""")

# KEYS: journal, this worker's turns set. ARGV: call id, outcome JSON, member. Returns the outcome recorded.
_FINISH = master_only("""
local recorded = redis.call('HGET', KEYS[1], ARGV[1] .. ':outcome')
if not recorded then
  redis.call('HSET', KEYS[1], ARGV[1] .. ':outcome', ARGV[2])
  recorded = ARGV[2]
end
redis.call('SREM', KEYS[2], ARGV[3])
return recorded
""")


@dataclass(frozen=True)
class Entry:
    """What the journal says about a call about to run: `done` (with its outcome), `wait` (a live
    worker runs it) or `run` (this process runs it; `rerun` if an earlier, dead one had started it)."""

    state: Literal["done", "wait", "run"]
    outcome: dict[str, Any] | None = None
    holder: str | None = None
    crashes: int | None = None  # deliveries of the task that died before (begin's `count`), None if not counted

    @property
    def rerun(self) -> bool:
        return self.state == "run" and bool(self.holder)


def _member(session_id: str, message_id: str, call_id: str) -> str:
    return f"{keys.in_flight_member(session_id, message_id)}:{call_id}"


def begin(session_id: str, message_id: str, call_id: str, r: redis.Redis | None = None,
          count: str | None = None, on_counted: Callable[[], None] | None = None) -> Entry:
    """The journal's word on a call about to run (Entry). One round trip, unless a live-looking
    worker holds the call: its process may be gone from this host (a prefork child killed by a
    signal, whose heartbeat is still fresh), which only this host can tell, so then the script
    runs once more with that holder known dead. `count`: the task's delivery tag, counted in the
    same script (shared.deliveries); the entry's `crashes` says how many of those died before;
    `on_counted` runs as soon as the script counted, before any further round trip."""
    r = r or client("broker")
    state, value, crashes = _begin(r, session_id, message_id, call_id, known_dead="", count=count or "")
    if crashes is not None and on_counted is not None:
        on_counted()
    if state == "wait" and liveness.gone_from_this_host(value):
        state, value, _ = _begin(r, session_id, message_id, call_id, known_dead=value, count="")
    if state == "done":
        return Entry("done", outcome=json.loads(value), crashes=crashes)
    return Entry(state, holder=value or None, crashes=crashes)


def _begin(r: redis.Redis, session_id: str, message_id: str, call_id: str, known_dead: str,
           count: str) -> tuple[str, str, int | None]:
    state, value, crashes = r.register_script(_BEGIN)(
        keys=[keys.tool_journal(session_id, message_id), keys.worker_heartbeats(), keys.worker_turns(liveness.worker_id()),
              keys.turn_deliveries(session_id, message_id)],
        args=[call_id, liveness.worker_id(), time.time(), liveness.dead_before(), known_dead,
              get_settings().turn_status_ttl_s, _member(session_id, message_id, call_id),
              keys.valid_step_tag(count) if count else ""])
    return state, value, crashes


def finish(session_id: str, message_id: str, call_id: str, outcome: dict[str, Any],
           r: redis.Redis | None = None) -> dict[str, Any]:
    """Record the call's outcome unless one is recorded already; returns the one recorded."""
    r = r or client("broker")
    recorded = r.register_script(_FINISH)(
        keys=[keys.tool_journal(session_id, message_id), keys.worker_turns(liveness.worker_id())],
        args=[call_id, json.dumps(outcome), _member(session_id, message_id, call_id)])
    return json.loads(recorded)


def unfinished_by(session_id: str, message_id: str, worker: str, r: redis.Redis | None = None) -> list[str]:
    """The calls of the turn that `worker` started and that have no outcome."""
    entries = (r or client("broker")).hgetall(keys.tool_journal(session_id, message_id))
    return [field.rpartition(":")[0] for field, holder in entries.items()
            if field.endswith(":started") and holder == worker and f"{field.rpartition(':')[0]}:outcome" not in entries]
