"""One settings object, read from the environment.

The Redis URLs have names of their own (PROGRESS_REDIS_URL, ...); everything
else is prefixed TURNSTREAM_. A single REDIS_URL switches to single-instance mode."""

from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared import defaults, redis_urls


def _local(store: str) -> str:
    return f"redis://127.0.0.1:{defaults.DEV_REDIS_PORTS[store]}/0"


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TURNSTREAM_", extra="ignore", populate_by_name=True)

    redis_url: str | None = Field(None, validation_alias=_env("REDIS_URL"))
    broker_redis_url: str = Field(_local("broker"), validation_alias=_env(defaults.STORE_URL_ENV["broker"]))
    progress_redis_url: str = Field(_local("progress"), validation_alias=_env(defaults.STORE_URL_ENV["progress"]))
    exec_cache_redis_url: str = Field(_local("exec_cache"), validation_alias=_env(defaults.STORE_URL_ENV["exec_cache"]))
    auth_memo_redis_url: str = Field(_local("auth_memo"), validation_alias=_env(defaults.STORE_URL_ENV["auth_memo"]))

    secret: SecretStr = SecretStr("")
    dev: bool = False

    progress_ttl_s: int = defaults.PROGRESS_TTL_S
    exec_cache_ttl_s: int = defaults.EXEC_CACHE_TTL_S
    auth_memo_ttl_s: int = defaults.AUTH_MEMO_TTL_S
    turn_status_ttl_s: int = defaults.TURN_STATUS_TTL_S
    progress_log_maxlen: int = defaults.PROGRESS_LOG_MAXLEN

    sse_heartbeat_s: float = defaults.SSE_HEARTBEAT_S
    sse_retry_ms: int = defaults.SSE_RETRY_MS
    sse_client_queue: int = defaults.SSE_CLIENT_QUEUE
    sse_redis_connections: int = defaults.SSE_REDIS_CONNECTIONS
    token_coalesce_s: float = defaults.TOKEN_COALESCE_S
    tool_progress_coalesce_s: float = defaults.TOOL_PROGRESS_COALESCE_S

    user_token_ttl_s: int = defaults.USER_TOKEN_TTL_S
    stream_token_ttl_s: int = defaults.STREAM_TOKEN_TTL_S

    redis_pool_size: int = defaults.REDIS_POOL_SIZE
    redis_pool_timeout_s: float = defaults.REDIS_POOL_TIMEOUT_S
    redis_socket_timeout_s: float = defaults.REDIS_SOCKET_TIMEOUT_S
    redis_connect_timeout_s: float = defaults.REDIS_CONNECT_TIMEOUT_S

    prompt_max_chars: int = defaults.PROMPT_MAX_CHARS
    tool_latency_ms: int = defaults.TOOL_LATENCY_MS
    report_duration_s: float = Field(defaults.REPORT_DURATION_S, ge=0)
    tool_processes: int = defaults.TOOL_PROCESSES
    tool_cpu_s: float = defaults.TOOL_CPU_S
    tool_memory_mb: int = defaults.TOOL_MEMORY_MB
    tool_wall_s: float = defaults.TOOL_WALL_S

    reasoner: Literal["rules", "openai", "local"] = defaults.REASONER
    reasoner_timeout_s: float = defaults.REASONER_TIMEOUT_S
    max_tool_rounds: int = Field(defaults.MAX_TOOL_ROUNDS, ge=1)
    history_turns: int = Field(defaults.HISTORY_TURNS, ge=0)
    tool_result_chars: int = defaults.TOOL_RESULT_CHARS
    openai_base_url: str = defaults.OPENAI_BASE_URL
    openai_api_key: SecretStr = SecretStr("")
    openai_model: str = defaults.OPENAI_MODEL
    local_model_path: str | None = None
    local_context_tokens: int = defaults.LOCAL_CONTEXT_TOKENS
    local_max_answer_tokens: int = defaults.LOCAL_MAX_ANSWER_TOKENS
    local_threads: int = defaults.LOCAL_THREADS

    tools_config: str | None = None
    mcp_servers: str | None = None
    mcp_tools_ttl_s: float = defaults.MCP_TOOLS_TTL_S
    mcp_connect_timeout_s: float = defaults.MCP_CONNECT_TIMEOUT_S
    mcp_call_timeout_s: float = defaults.MCP_CALL_TIMEOUT_S
    tickets_file: str = defaults.TICKETS_FILE

    auth_verifier: Literal["policy", "http"] = defaults.AUTH_VERIFIER
    auth_policy_file: str = ""
    auth_verifier_url: str = ""
    auth_verifier_timeout_s: float = defaults.AUTH_VERIFIER_TIMEOUT_S
    auth_verifier_concurrency: int = defaults.AUTH_VERIFIER_CONCURRENCY
    auth_deny_ttl_s: int = defaults.AUTH_DENY_TTL_S
    auth_strict: bool = defaults.AUTH_STRICT
    exec_cache_tools_file: str = ""
    exec_cache_max_bytes: int = defaults.EXEC_CACHE_MAX_BYTES
    exec_cache_error_ttl_s: int = defaults.EXEC_CACHE_ERROR_TTL_S
    exec_cache_lease_s: float = defaults.EXEC_CACHE_LEASE_S
    exec_cache_wait_s: float = defaults.EXEC_CACHE_WAIT_S

    visibility_timeout_s: int = defaults.VISIBILITY_TIMEOUT_S
    task_soft_time_limit_s: int = defaults.TASK_SOFT_TIME_LIMIT_S
    task_time_limit_s: int = defaults.TASK_TIME_LIMIT_S
    unacked_restore_interval_s: int = defaults.UNACKED_RESTORE_INTERVAL_S
    worker_soft_shutdown_s: float = defaults.WORKER_SOFT_SHUTDOWN_S
    redelivery_sweep_s: float = defaults.REDELIVERY_SWEEP_S
    turn_max_redeliveries: int = defaults.TURN_MAX_REDELIVERIES
    heartbeat_s: float = Field(defaults.HEARTBEAT_S, gt=0)
    progress_outbox_max: int = Field(defaults.PROGRESS_OUTBOX_MAX, ge=0)
    max_deliveries: int = Field(defaults.MAX_DELIVERIES, ge=1)

    breaker_fail_max: int = defaults.BREAKER_FAIL_MAX
    breaker_reset_s: float = defaults.BREAKER_RESET_S
    broker_retry_after_s: int = defaults.BROKER_RETRY_AFTER_S
    worker_broker_wait_s: float = defaults.WORKER_BROKER_WAIT_S
    turn_rate_limit: str = defaults.TURN_RATE_LIMIT
    request_rate_limit: str = defaults.REQUEST_RATE_LIMIT
    trusted_proxies: int = Field(defaults.TRUSTED_PROXIES, ge=0)
    cors_origins: str = defaults.CORS_ORIGINS

    @model_validator(mode="after")
    def _limits_below_visibility(self) -> "Settings":
        """The time limits must stay below the visibility timeout (shared.celery_config.transport_options)."""
        if not self.task_soft_time_limit_s < self.task_time_limit_s < self.visibility_timeout_s:
            raise ValueError("need TURNSTREAM_TASK_SOFT_TIME_LIMIT_S < TURNSTREAM_TASK_TIME_LIMIT_S "
                             "< TURNSTREAM_VISIBILITY_TIMEOUT_S")
        return self

    @model_validator(mode="after")
    def _readable_redis_urls(self) -> "Settings":
        """Every store URL must parse, and the broker cannot be a Cluster (Celery cannot use one)."""
        if self.redis_url and redis_urls.parse(self.redis_url).cluster:
            raise ValueError("REDIS_URL cannot be a cluster:// URL: single-instance mode gives each store a DB "
                             "number, and a Redis Cluster has DB 0 only (set the four store URLs instead)")
        for store in defaults.STORES:
            target = self.store_target(store)
            if store == "broker" and target.cluster:
                raise ValueError("BROKER_REDIS_URL cannot be a cluster:// URL: Celery's broker and result "
                                 "backend need one master (use redis:// or sentinel://)")
        return self

    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    # Operations. Flower keeps its own variable name; PROMETHEUS_MULTIPROC_DIR is read by
    # prometheus-client itself at import (shared.metrics), so it is no setting here.
    flower_basic_auth: SecretStr = Field(SecretStr(""), validation_alias=_env("FLOWER_BASIC_AUTH"))
    flower_port: int = defaults.FLOWER_PORT
    worker_metrics_port: int = defaults.WORKER_METRICS_PORT
    log_format: str = defaults.LOG_FORMAT
    task_events: bool = defaults.TASK_EVENTS
    worker_nice: int = Field(defaults.WORKER_NICE, ge=0, le=19)
    ops_refresh_s: float = defaults.OPS_REFRESH_S
    ops_window_s: int = defaults.OPS_WINDOW_S
    ops_inspect_timeout_s: float = defaults.OPS_INSPECT_TIMEOUT_S
    stall_s: float = defaults.STALL_S
    redact_user_text: bool = defaults.REDACT_USER_TEXT

    @property
    def beat_s(self) -> float:
        """How often worker processes beat: TURNSTREAM_HEARTBEAT_S, or faster if a dead worker
        (three missed beats, noticed at the next) would otherwise not be noticed within a stall."""
        return min(self.heartbeat_s, self.stall_s / 4)

    @property
    def single_instance(self) -> bool:
        return bool(self.redis_url)

    def store_url(self, store: str) -> str:
        """The URL of a store's server; in single-instance mode, a DB number per store on REDIS_URL."""
        if store not in defaults.STORES:
            raise ValueError(f"unknown Redis store {store!r}")
        if self.redis_url:
            parts = urlsplit(self.redis_url)
            return urlunsplit(parts._replace(path=f"/{defaults.STORES.index(store)}"))
        return getattr(self, f"{store}_redis_url")

    def store_target(self, store: str) -> redis_urls.RedisTarget:
        """The store's topology (one server, Sentinel or Cluster), read from its URL."""
        return redis_urls.parse(self.store_url(store))

    def secret_key(self) -> str:
        value = self.secret.get_secret_value()
        if not value:
            raise RuntimeError("TURNSTREAM_SECRET is not set; tokens cannot be signed or checked")
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reload_settings() -> Settings:
    """Re-read the environment (tests and the dev runner change it)."""
    get_settings.cache_clear()
    return get_settings()
