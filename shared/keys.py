"""Every Redis key and channel name, built only from validated ids.

Ids come from URLs and tokens; validating them here means a hostile id can never
shape a key (no `*`, no `:`, no unbounded length).

Hash tags. On a Redis Cluster, keys a script or multi-key command touches together must sit
in one slot, so the part of such a name in `{...}` is what the slot is computed from: a
turn's progress log, its dedupe markers and its channel carry `{session:message}` (one slot
per turn, so turns spread over the shards), a tool call's cache keys carry
`{tool:scope:digest}`, the auth memo's keys the user id or the fixed `{gen}` tag (see there). On one server braces are plain characters, so the same
names serve both topologies; there is no second naming scheme to keep in step.
Rejected: tagging by session only (`{sid}`): a long session would pin all its turns to
one shard, and turns are what the load is made of."""

import re

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
PREFIX = "agent"


class InvalidId(ValueError):
    """An id that does not match ID_PATTERN."""

    def __init__(self, what: str, value: object):
        super().__init__(f"invalid {what}: must match {ID_PATTERN.pattern}")
        self.what = what
        self.value = value


def valid_id(value: object, what: str = "id") -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise InvalidId(what, value)
    return value


def _turn(session_id: str, message_id: str) -> str:
    return f"{valid_id(session_id, 'session_id')}:{valid_id(message_id, 'message_id')}"


def _turn_slot(session_id: str, message_id: str) -> str:
    """The turn as a hash tag: everything of one turn's progress lands in one Cluster slot."""
    return "{" + _turn(session_id, message_id) + "}"


def progress_channel(session_id: str, message_id: str) -> str:
    """Pub/sub channel for live progress (channels are not keys: they cannot expire). On a
    Cluster it is a shard channel (SPUBLISH), in the slot of the turn's log."""
    return f"{PREFIX}:progress:{_turn_slot(session_id, message_id)}"


def progress_log(session_id: str, message_id: str) -> str:
    """Capped stream holding every progress event of a turn, for replay."""
    return f"{PREFIX}:progress-log:{_turn_slot(session_id, message_id)}"


def progress_marker(session_id: str, message_id: str, dedupe: str) -> str:
    """SET NX marker so a redelivered step does not publish the same event twice."""
    return f"{PREFIX}:progress-once:{_turn_slot(session_id, message_id)}:{dedupe}"


def turn_record(session_id: str, message_id: str) -> str:
    """Hash holding the turn's record (shared.turns.TurnRecord); lives on the broker instance (never evicted)."""
    return f"{PREFIX}:turn:{_turn(session_id, message_id)}"


def session_owner(session_id: str) -> str:
    return f"{PREFIX}:session:{valid_id(session_id, 'session_id')}:owner"


def session_turns(session_id: str) -> str:
    """List of the session's message ids, oldest first."""
    return f"{PREFIX}:session:{valid_id(session_id, 'session_id')}:turns"


def user_sessions(tenant: str, user: str) -> str:
    """Sorted set of a user's session ids, scored by last activity."""
    return f"{PREFIX}:user-sessions:{valid_id(tenant, 'tenant')}:{valid_id(user, 'user')}"


def progress_channel_pattern() -> str:
    """PUBSUB CHANNELS pattern matching every turn's progress channel (for /ops)."""
    return f"{PREFIX}:progress:*"


def turns_in_flight() -> str:
    """Sorted set of `session_id:message_id` for turns not yet final, scored by their last status
    change: /ops lists it, the redelivery sweeper resends what has not moved."""
    return f"{PREFIX}:turns-in-flight"


def guard_window(minute: int) -> str:
    """Hash of guard outcome counts (`exec_cache:hit`, ...) for one minute since the epoch."""
    return f"{PREFIX}:ops:guards:{int(minute)}"


def web_processes() -> str:
    """Hash of live web processes: field = process name, value = JSON of its SSE figures and time."""
    return f"{PREFIX}:ops:web-processes"


# --- Tool-call guards -------------------------------------------------------------------------------
# Tool names come from tool servers (MCP allows dots); they get their own, slightly wider pattern.
TOOL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def valid_tool(value: object) -> str:
    if not isinstance(value, str) or not TOOL_PATTERN.fullmatch(value):
        raise InvalidId("tool", value)
    return value


# Auth memo slots: a user's memos and their user generation carry the user id as tag, the
# shared generations (all, per tenant, per tool) the fixed tag {gen}. The batch preflight then
# reads two slots, with one MGET each (shared.redis_stores.mget), however many tools it asks about.
# Rejected: one tag for the whole memo (a single MGET, but every memo of every user on one shard,
# which defeats a Cluster), and copying the shared generations into each user's slot (bumping
# "all" would have to touch every user).
GENERATIONS_TAG = "{gen}"


def auth_memo(tenant: str, user: str, tool: str) -> str:
    """One permission memo per tenant x user x tool; its value carries the generations it was made under."""
    return f"{PREFIX}:auth:memo:{{{valid_id(user, 'user')}}}:{valid_id(tenant, 'tenant')}:{valid_tool(tool)}"


def auth_generation_all() -> str:
    """Bumped to invalidate every memo at once (O(1): memos made under an older value no longer count)."""
    return f"{PREFIX}:auth:gen:{GENERATIONS_TAG}:all"


def auth_generation_tenant(tenant: str) -> str:
    return f"{PREFIX}:auth:gen:{GENERATIONS_TAG}:tenant:{valid_id(tenant, 'tenant')}"


def auth_generation_user(user: str) -> str:
    """Per user id across tenants: invalidating a little more than needed only costs a re-check.
    In the slot of the user's memos."""
    return f"{PREFIX}:auth:gen:user:{{{valid_id(user, 'user')}}}"


def auth_generation_tool(tool: str) -> str:
    return f"{PREFIX}:auth:gen:{GENERATIONS_TAG}:tool:{valid_tool(tool)}"


def _exec_call(tool: str, scope: str, digest: str) -> str:
    """One tool call as a hash tag: its result, lease and outcome stream, which one script
    touches together, share a slot; different calls spread over the shards."""
    return "{" + f"{valid_tool(tool)}:{scope}:{digest}" + "}"


def exec_result(tool: str, scope: str, digest: str) -> str:
    """A cached tool result. `scope` is built by shared.guards.exec_cache from validated ids; `digest` is hex sha256."""
    return f"{PREFIX}:exec:result:{_exec_call(tool, scope, digest)}"


def exec_lease(tool: str, scope: str, digest: str) -> str:
    """SET NX PX: whoever holds it runs the tool; it expires if that owner dies."""
    return f"{PREFIX}:exec:lease:{_exec_call(tool, scope, digest)}"


def exec_done(tool: str, scope: str, digest: str) -> str:
    """A one-entry stream the owner appends its outcome to; waiters block on it (XREAD BLOCK)."""
    return f"{PREFIX}:exec:done:{_exec_call(tool, scope, digest)}"


def session_history(session_id: str) -> str:
    """List of the session's last N finished turns (JSON prompt + answer), oldest first."""
    return f"{PREFIX}:session:{valid_id(session_id, 'session_id')}:history"


# Prefix of the `limits` library's counters (it appends its own parts).
RATE_LIMIT_PREFIX = f"{PREFIX}:ratelimit"


def turn_rate_limit_identity(tenant: str, user: str) -> str:
    """Whose turn creations a rate-limit window counts."""
    return f"turns:{valid_id(tenant, 'tenant')}:{valid_id(user, 'user')}"


def in_flight_member(session_id: str, message_id: str) -> str:
    return _turn(session_id, message_id)


def redelivery_lock() -> str:
    """Held by the one worker sweeping for stalled turns at a time."""
    return f"{PREFIX}:redelivery-lock"


STEP_TAG_PATTERN = re.compile(r"^[a-z_]{1,32}(-[A-Za-z0-9]{1,32})?$")


def turn_deliveries(session_id: str, message_id: str) -> str:
    """Hash of a turn's step deliveries that started and have not finished: field = step tag
    (`reason-1`, `call_tool-r1c0`), value = count (shared.deliveries)."""
    return f"{PREFIX}:deliveries:{_turn(session_id, message_id)}"


def valid_step_tag(value: object) -> str:
    if not isinstance(value, str) or not STEP_TAG_PATTERN.fullmatch(value):
        raise InvalidId("step tag", value)
    return value


# --- Durable turns: worker liveness, the tool-call journal, the progress outbox -------------------

def worker_heartbeats() -> str:
    """Sorted set of live worker processes (their ids), scored by their last heartbeat."""
    return f"{PREFIX}:workers-alive"


def worker_turns(worker: str) -> str:
    """Set of `session_id:message_id` whose current step (or a tool call) this worker process runs."""
    return f"{PREFIX}:worker-turns:{valid_id(worker, 'worker')}"


def tool_journal(session_id: str, message_id: str) -> str:
    """Hash of the turn's tool calls by call id: `started` (by which worker) or their outcome."""
    return f"{PREFIX}:turn-calls:{_turn(session_id, message_id)}"


def outbox() -> str:
    """List of the progress events workers could not publish yet, oldest first (one list for all,
    so its order is the order the events were made in, across processes)."""
    return f"{PREFIX}:outbox"


def outbox_counts() -> str:
    """Hash: worker id -> how many of its events wait in the outbox (each worker has its own bound)."""
    return f"{PREFIX}:outbox-counts"


def outbox_lock() -> str:
    """Held by the one process publishing the outbox at a time, so it goes out in order."""
    return f"{PREFIX}:outbox-lock"


def outbox_pending(session_id: str, message_id: str) -> str:
    """How many of the turn's events wait in some outbox: a stream does not restore the terminal
    event while they do, so the outbox publishes it after them, in order."""
    return f"{PREFIX}:outbox-pending:{_turn(session_id, message_id)}"


def liveness_lock() -> str:
    """Held by the one worker process acting on dead workers at a time."""
    return f"{PREFIX}:liveness-lock"
