"""Every default in one place, so a reader can see the system's knobs at a glance."""

# Redis roles, in the order their DB numbers are assigned in single-instance mode.
ROLES = ("broker", "progress", "exec_cache", "auth_memo")

# Dev ports stay clear of 6379, where a machine's own Redis usually listens.
DEV_WEB_PORT = 8000
DEV_REDIS_PORTS = {"broker": 6391, "progress": 6392, "exec_cache": 6393, "auth_memo": 6394}

# Eviction policy each role must (or should) run with.
REQUIRED_POLICY = {"broker": "noeviction", "progress": "noeviction"}
PREFERRED_POLICY = {"exec_cache": "allkeys-lru", "auth_memo": "volatile-ttl"}

# TTLs, seconds.
PROGRESS_TTL_S = 10 * 60
EXEC_CACHE_TTL_S = 45 * 60
AUTH_MEMO_TTL_S = 30 * 60
TURN_STATUS_TTL_S = 24 * 60 * 60
SESSION_TTL_S = 7 * 24 * 60 * 60

# Progress event log: a capped stream per turn.
PROGRESS_LOG_MAXLEN = 2000

# SSE.
SSE_HEARTBEAT_S = 15.0
SSE_RETRY_MS = 2000
SSE_CLIENT_QUEUE = 256
SSE_SUBSCRIBE_TIMEOUT_S = 5.0
TOKEN_COALESCE_S = 0.05

# Tokens.
USER_TOKEN_TTL_S = 12 * 60 * 60
STREAM_TOKEN_TTL_S = 15 * 60
JWT_ALGORITHM = "HS256"

# Redis client behaviour: fail fast, and a blocking pool so gevent/threads wait instead of erroring.
REDIS_POOL_SIZE = 200
REDIS_POOL_TIMEOUT_S = 5.0
REDIS_SOCKET_TIMEOUT_S = 2.0
REDIS_CONNECT_TIMEOUT_S = 1.0

# Breakers, one per Redis role: after this many consecutive connection failures the role is
# "open" and every call fails at once; after the reset time one trial call may close it again.
BREAKER_FAIL_MAX = 3
BREAKER_RESET_S = 2.0

# Broker outages. The web tier answers 503 with this Retry-After instead of waiting; a worker
# step waits this long for the broker to return before handing its message back for redelivery.
BROKER_RETRY_AFTER_S = 5
WORKER_BROKER_WAIT_S = 60.0

# Per-user turn creation limit (`limits` notation), counted on the broker instance.
TURN_RATE_LIMIT = "60/minute"

# Browsers from these origins may call the API (comma-separated; empty: same origin only).
CORS_ORIGINS = ""


# Input limits.
PROMPT_MAX_CHARS = 4000

# Built-in tools' simulated upstream latency (the demo should look like real work).
TOOL_LATENCY_MS = 300

# Celery. A step's hard time limit stays below the visibility timeout, so a running step is
# never handed to a second worker; an unacked message of a dead worker comes back after it.
VISIBILITY_TIMEOUT_S = 600
TASK_SOFT_TIME_LIMIT_S = 120
TASK_TIME_LIMIT_S = 150
UNACKED_RESTORE_INTERVAL_S = 10
WORKER_SOFT_SHUTDOWN_S = 10.0
# A turn with no status change for a visibility timeout lost its message (kombu's Redis
# transport can drop one popped as the broker dies): workers send its chain again, this often
# and at most this many times.
REDELIVERY_SWEEP_S = 30.0
TURN_MAX_REDELIVERIES = 3
PUBLISH_RETRIES_WEB = 1
