"""`/metrics` for Prometheus, and the heartbeat that keeps this process's SSE figures current.

Two parts make one exposition: the recorded series (counters, histograms, SSE gauges) of every
process that shares PROMETHEUS_MULTIPROC_DIR, aggregated by prometheus-client, and the live
figures of /ops (queues, workers, turns in flight, each Redis store, guard ratios, pub/sub),
read at scrape time from the shared snapshot. The live figures describe the whole system, so
scrape one web process for them (or take max() over the web targets)."""

import logging

import gevent
import redis
from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shared import defaults, metrics
from shared.tracing import suppress_instrumentation
from web import extensions
from web.dispatcher import Dispatcher
from web.snapshot import publish_web_process

log = logging.getLogger(__name__)

metrics_bp = Blueprint("metrics", __name__)


class LiveCollector(Collector):
    """The /ops snapshot as Prometheus families."""

    def __init__(self, snapshot: dict):
        self.snapshot = snapshot

    def collect(self):
        snap = self.snapshot
        yield from self._workers(snap["workers"])
        yield from self._queues(snap["queues"])
        if snap["turns"]["ok"]:
            yield GaugeMetricFamily("turnstream_turns_in_flight", "Turns accepted and not yet final.",
                                    value=snap["turns"]["data"]["count"])
            yield GaugeMetricFamily("turnstream_turns_stalled",
                                    "Unfinished turns whose step has not moved for longer than TURNSTREAM_STALL_S.",
                                    value=snap["turns"]["data"]["stalled"])
        yield from self._redis(snap["redis"])
        yield from self._guards(snap["guards"])
        if snap["pubsub"]["ok"]:
            data = snap["pubsub"]["data"]
            yield GaugeMetricFamily("turnstream_pubsub_channels", "Active progress channels on the progress Redis.",
                                    value=data["active_channels"])
            yield GaugeMetricFamily("turnstream_pubsub_subscribers",
                                    "PUBSUB NUMSUB summed over the listed progress channels.",
                                    value=sum(c["subscribers"] for c in data["channels"]))

    @staticmethod
    def _workers(section: dict):
        if not section["ok"]:
            return
        online = GaugeMetricFamily("turnstream_workers_online", "Celery workers that answered inspect.",
                                   value=len(section["data"]))
        active = GaugeMetricFamily("turnstream_tasks_active", "Steps running now, by step.", labels=["step"])
        by_step = dict.fromkeys(defaults.STEP_QUEUES, 0)
        for worker in section["data"]:
            for task in worker["active"]:
                by_step[task["step"]] = by_step.get(task["step"], 0) + 1
        for step, count in by_step.items():
            active.add_metric([step], count)
        yield online
        yield active

    @staticmethod
    def _queues(section: dict):
        if not section["ok"]:
            return
        length = GaugeMetricFamily("turnstream_queue_length", "Messages waiting in a Celery queue.", labels=["queue"])
        for queue in section["data"]["queues"]:
            length.add_metric([queue["name"]], queue["depth"])
        yield length
        yield GaugeMetricFamily("turnstream_queue_unacked", "Messages taken by workers and not yet acknowledged.",
                                value=section["data"]["unacked"])

    @staticmethod
    def _redis(rows: list[dict]):
        up = GaugeMetricFamily("turnstream_redis_up", "1 if the store's server answered PING.", labels=["store"])
        ping = GaugeMetricFamily("turnstream_redis_ping_seconds", "PING round trip.", labels=["store"])
        used = GaugeMetricFamily("turnstream_redis_used_memory_bytes", "INFO used_memory.", labels=["store"])
        cap = GaugeMetricFamily("turnstream_redis_maxmemory_bytes", "INFO maxmemory (0: no limit).", labels=["store"])
        evicted = CounterMetricFamily("turnstream_redis_evicted_keys", "INFO evicted_keys.", labels=["store"])
        clients = GaugeMetricFamily("turnstream_redis_connected_clients", "INFO connected_clients.", labels=["store"])
        policy = GaugeMetricFamily("turnstream_redis_policy_ok", "1 if maxmemory-policy suits the store.",
                                   labels=["store", "policy"])
        for row in rows:
            store = row["store"]
            up.add_metric([store], 1 if row["up"] else 0)
            if not row["up"]:
                continue
            ping.add_metric([store], row["ping_ms"] / 1000)
            used.add_metric([store], row["used_memory"])
            cap.add_metric([store], row["maxmemory"])
            evicted.add_metric([store], row["evicted_keys"])
            clients.add_metric([store], row["connected_clients"])
            policy.add_metric([store, row["policy"] or "unknown"], 1 if row["policy_ok"] else 0)
        yield from (up, ping, used, cap, evicted, clients, policy)

    @staticmethod
    def _guards(section: dict):
        if not section["ok"]:
            return
        ratio = GaugeMetricFamily("turnstream_guard_ratio",
                                  "Share of guard lookups by result over the ops window (TURNSTREAM_OPS_WINDOW_S).",
                                  labels=["guard", "result"])
        for guard, results in section["data"]["ratios"].items():
            for result, value in results.items():
                if value is not None:
                    ratio.add_metric([guard, result], value)
        yield ratio


@metrics_bp.get("/metrics")
def expose():
    """Prometheus text format: recorded series of every process, then the live figures."""
    refresh_sse_figures(extensions.dispatcher())
    live = CollectorRegistry(auto_describe=False)
    live.register(LiveCollector(extensions.snapshotter().get()))
    body = generate_latest(metrics.registry()) + generate_latest(live)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)


_cut_reported: dict[int, int] = {}


def refresh_sse_figures(dispatcher: Dispatcher) -> dict:
    """Copy this process's dispatcher figures into the gauges and the shared web-process hash."""
    figures = {"clients": dispatcher.client_count, "channels": dispatcher.channel_count,
               "clients_cut": dispatcher.clients_cut}
    metrics.SSE_CLIENTS.set(figures["clients"])
    metrics.SSE_CHANNELS.set(figures["channels"])
    new_cuts = figures["clients_cut"] - _cut_reported.get(id(dispatcher), 0)
    if new_cuts > 0:
        metrics.SSE_CLIENTS_CUT.inc(new_cuts)
        _cut_reported[id(dispatcher)] = figures["clients_cut"]
    try:
        with suppress_instrumentation():
            publish_web_process(figures)
    except redis.RedisError as exc:
        log.debug("web process figures not published: %s", exc)
    return figures


def start_heartbeat(dispatcher: Dispatcher, interval: float) -> gevent.Greenlet:
    """Refresh this process's SSE figures every `interval` seconds for as long as it lives."""
    def beat() -> None:
        while True:
            refresh_sse_figures(dispatcher)
            gevent.sleep(interval)
    return gevent.spawn(beat)
