"""One picture of the running system, for /ops and the live part of /metrics.

Each section is read independently and a failing one reports its error instead of sinking the
page: /ops is most needed exactly when a Redis is down. The Redis stores and the Celery inspect
are read concurrently (greenlets), and a snapshot is shared by every caller in this process for
`ops_refresh_s`, so many open /ops pages and Prometheus scrapes cost one round of reads."""

import json
import logging
import os
import socket
import time
from urllib.parse import urlsplit, urlunsplit

import gevent
import redis
from celery import Celery
from gevent.lock import Semaphore

from shared import defaults, keys, turns
from shared.celery_config import queues
from shared.eviction import judge_eviction, read_eviction
from shared.guards import stats as guard_stats
from shared.progress import sharded
from shared.redis_stores import client
from shared.settings import get_settings
from shared.tracing import suppress_instrumentation
from shared.turn_flow import step_of, turn_of

log = logging.getLogger(__name__)

# kombu's Redis transport: a queue with priorities is several lists, and unacked messages
# (taken by a worker, not yet acknowledged) wait in this hash until the ack.
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (3, 6, 9)
KOMBU_UNACKED = "unacked"
# The best of a few pings: the page's other reads share this process, and one slow wake-up of a
# greenlet is not the server's latency.
PINGS = 3


def process_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def redacted(url: str) -> str:
    """A Redis URL without its password, for display."""
    parts = urlsplit(url)
    if parts.password:  # the hosts part as written: sentinel:// and cluster:// URLs list several
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}")
    return urlunsplit(parts)


def _ping(r: redis.Redis) -> float:
    started = time.perf_counter()
    r.ping()
    return time.perf_counter() - started


def redis_store(store: str) -> dict:
    """Ping latency, memory, evictions, policy (judged for the store) and clients of one store's server."""
    url = get_settings().store_url(store)
    stats: dict = {"store": store, "url": redacted(url), "up": False}
    r = client(store)
    try:
        stats["ping_ms"] = round(min(_ping(r) for _ in range(PINGS)) * 1000, 2)
        info = r.info()
        report = judge_eviction(store, read_eviction(r))
    except redis.RedisError as exc:
        stats["error"] = f"{type(exc).__name__}: {exc}"
        return stats
    stats.update(up=True, used_memory=int(info.get("used_memory", 0)), maxmemory=int(info.get("maxmemory", 0)),
                 evicted_keys=int(info.get("evicted_keys", 0)), connected_clients=int(info.get("connected_clients", 0)),
                 policy=report.policy, policy_ok=report.ok, policy_message=report.message)
    return stats


def queue_depths(r: redis.Redis | None = None) -> dict:
    """Messages waiting per Celery queue (all priority lists), and those taken but not yet acked."""
    r = r or client("broker")
    names = queues()
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.llen(name)
        for step in KOMBU_PRIORITY_STEPS:
            pipe.llen(f"{name}{KOMBU_PRIORITY_SEP}{step}")
    pipe.hlen(KOMBU_UNACKED)
    counts = pipe.execute()
    per_queue = len(KOMBU_PRIORITY_STEPS) + 1
    depths = [{"name": name, "depth": sum(counts[i * per_queue:(i + 1) * per_queue])} for i, name in enumerate(names)]
    return {"queues": depths, "unacked": counts[-1]}


def _active_task(task: dict) -> dict:
    turn = turn_of(task.get("args"))
    started = task.get("time_start")
    return {"task_id": task.get("id"), "step": step_of(str(task.get("name", ""))),
            "session_id": turn.get("session_id"), "message_id": turn.get("message_id"),
            "runtime_s": round(time.time() - started, 1) if started else None}


def workers(app: Celery, timeout: float) -> list[dict]:
    """Every worker that answered `inspect active` within `timeout`, with what it is running."""
    replies = app.control.inspect(timeout=timeout).active() or {}
    return [{"name": name, "active": [_active_task(t) for t in tasks or []]} for name, tasks in sorted(replies.items())]


def pubsub(r: redis.Redis | None = None, limit: int = defaults.OPS_MAX_CHANNELS) -> dict:
    """Subscribers per active progress channel (PUBSUB NUMSUB), at most `limit` channels.
    On a Cluster, the shard channels of every master (PUBSUB SHARDCHANNELS / SHARDNUMSUB)."""
    r = r or client("progress")
    pattern = keys.progress_channel_pattern()
    if not sharded(r):
        channels = sorted(r.pubsub_channels(pattern))
        counts = r.pubsub_numsub(*channels[:limit]) if channels else []
    else:
        channels, counts = [], []
        for node in r.get_primaries():
            node_redis = r.get_redis_connection(node)
            on_node = sorted(node_redis.pubsub_shardchannels(pattern))
            channels += on_node
            shown = on_node[:max(0, limit - len(counts))]
            counts += node_redis.pubsub_shardnumsub(*shown) if shown else []
    return {"active_channels": len(channels), "truncated": len(channels) > limit,
            "channels": [{"channel": channel, "subscribers": int(n)} for channel, n in counts]}


def publish_web_process(figures: dict, r: redis.Redis | None = None) -> None:
    """Record this process's SSE figures where every web process's /ops can sum them."""
    (r or client("progress")).hset(keys.web_processes(), process_name(), json.dumps({**figures, "at": time.time()}))


def web_processes(r: redis.Redis | None = None, ttl_s: float = defaults.OPS_WEB_HEARTBEAT_TTL_S) -> dict:
    """SSE clients, channels and cut-offs summed over web processes seen within `ttl_s`."""
    r = r or client("progress")
    now, live, dead = time.time(), [], []
    for name, raw in r.hgetall(keys.web_processes()).items():
        figures = json.loads(raw)
        (live if now - figures.get("at", 0) <= ttl_s else dead).append((name, figures))
    if dead:
        r.hdel(keys.web_processes(), *(name for name, _ in dead))
    total = {field: sum(f.get(field, 0) for _, f in live) for field in ("clients", "channels", "clients_cut")}
    return {**total, "processes": [{"name": name, **f} for name, f in sorted(live)]}


def _section(name: str, read) -> dict:
    try:
        with suppress_instrumentation():
            return {"ok": True, "data": read()}
    except Exception as exc:  # one broken section must not hide the others
        log.warning("ops section %s failed: %s", name, exc)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def take_snapshot(app: Celery) -> dict:
    settings = get_settings()
    jobs = {
        "workers": lambda: workers(app, settings.ops_inspect_timeout_s),
        "queues": queue_depths,
        "turns": _turns,
        "guards": lambda: _guards(settings.ops_window_s),
        "pubsub": pubsub,
        "sse": web_processes,
        **{f"redis:{store}": (lambda store=store: redis_store(store)) for store in defaults.STORES},
    }
    greenlets = {name: gevent.spawn(_section, name, read) for name, read in jobs.items()}
    gevent.joinall(list(greenlets.values()), timeout=settings.redis_socket_timeout_s + settings.ops_inspect_timeout_s)
    results = {name: (g.value if g.ready() else {"ok": False, "error": "timed out"}) for name, g in greenlets.items()}
    snapshot = {name: value for name, value in results.items() if not name.startswith("redis:")}
    snapshot["redis"] = [_store_row(store, results[f"redis:{store}"]) for store in defaults.STORES]
    snapshot["generated_at"] = time.time()
    snapshot["single_instance"] = settings.single_instance
    return snapshot


def _store_row(store: str, section: dict) -> dict:
    return section["data"] if section["ok"] else {"store": store, "up": False, "error": section["error"]}


def _turns() -> dict:
    stall_s = get_settings().stall_s
    items = turns.turns_in_flight(limit=50, stall_s=stall_s)  # prunes finished and stale entries, so count after it
    return {"count": turns.count_in_flight(), "stalled": turns.count_stalled(stall_s), "stall_s": stall_s,
            "items": items}


def _guards(window_s: int) -> dict:
    counts = guard_stats.guard_window(window_s)
    return {"window_s": window_s, "counts": counts, "ratios": guard_stats.guard_ratios(counts)}


class Snapshotter:
    """Shares one snapshot among concurrent callers for `max_age` seconds."""

    def __init__(self, app: Celery, max_age: float):
        self._app = app
        self._max_age = max_age
        self._lock = Semaphore()
        self._snapshot: dict | None = None

    def get(self) -> dict:
        with self._lock:
            if self._snapshot is None or time.time() - self._snapshot["generated_at"] >= self._max_age:
                self._snapshot = take_snapshot(self._app)
            return self._snapshot
