"""The Celery settings both tiers share (how a turn's chain is built and sent: shared.turn_flow).

JSON only on the wire. At-least-once delivery: a step's message is acknowledged only after
the step ran (late acks), goes back to the queue if its worker process dies (reject on
worker lost), and a worker reserves one message at a time (prefetch 1), so a crash strands
at most one; a worker that vanished without a word is covered by the visibility timeout
(transport_options). Soft shutdown gives running steps time to finish before a stopping
worker hands their messages back.

Per step, the cost Celery adds is kept to what a turn uses (bench/capacity.py measures it):
one result backend per process, shared by its greenlets and threads (Celery's default is one per
thread, which under gevent means one per greenlet, each with its own connections); a producer
pool sized for a web process's concurrency; argument reprs of a turn's ids only (shared.redaction);
task events, which Flower needs, batched by workers (workers.task_events, with the `task-sent`
events of what they send: shared.sent_events) and switchable with TURNSTREAM_TASK_EVENTS."""

from celery import Celery
from kombu import Exchange, Queue

from shared import defaults
from shared.settings import Settings, get_settings
from shared.turn_flow import task_name


def queues() -> tuple[str, ...]:
    """Every queue a step is routed to, first served first; a worker started without -Q consumes
    them all."""
    return tuple(dict.fromkeys(defaults.STEP_QUEUES.values()))


def transport_options(settings: Settings) -> dict:
    """The same options for the broker and the result backend (Celery reads both). Under Sentinel
    they also carry the master's name and the sentinels' timeouts.

    The visibility timeout: a message taken but not acknowledged (its worker was killed, its host
    lost) goes back to its queue once it is this old, swept every `unacked_restore_interval`.
    It is the one place the whole system learns that a step is lost, so everything else is set
    against it: the task time limits stay below it (Settings refuses a config where they do not),
    so a running step is never handed to a second worker; and a turn whose record has not moved
    for this long is resent (workers.redelivery). Every other mention refers here."""
    target = settings.store_target("broker")
    sentinel = {"sentinel_kwargs": {"socket_timeout": settings.redis_socket_timeout_s,
                                    "socket_connect_timeout": settings.redis_connect_timeout_s}} if target.sentinel else {}
    return {**target.celery_transport_options(), **sentinel,
        # A worker reads its queues in the order given (-Q discover,llm), not round-robin: a new
        # turn's first step goes before the tool-call backlog. It cannot starve the backlog for
        # longer than new turns keep arriving faster than they can start.
        "queue_order_strategy": "priority",
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": settings.unacked_restore_interval_s,
        "unacked_restore_throttle": 1,
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_connect_timeout_s,
    }


def celery_config(settings: Settings) -> dict:
    transport = transport_options(settings)
    url = settings.store_target("broker").celery_url()
    return {
        "broker_url": url,
        "result_backend": url,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.redis_connect_timeout_s,
        "broker_connection_max_retries": None,
        "task_publish_retry_policy": {"max_retries": defaults.PUBLISH_RETRIES_WEB, "interval_start": 0,
                                      "interval_step": 0.2, "interval_max": 0.2},
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_expires": 3600,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_soft_shutdown_timeout": settings.worker_soft_shutdown_s,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        # Only a few steps' results are read (a chord's parts); the rest set ignore_result (workers.tasks).
        "result_backend_thread_safe": True,
        "broker_pool_limit": defaults.BROKER_POOL_LIMIT,
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "worker_hijack_root_logger": False,
        # A chord's errback also goes on each of its tasks (the behaviour Celery will make the
        # default): a tool call that crashes ends the turn with its own error at once, instead of
        # only through the chord's ChordError. turn_failed is idempotent, so both may run.
        "task_allow_error_cb_on_chord_header": True,
        # LLM-bound and tool-bound steps on their own queues, so each kind of worker scales alone.
        "task_queues": [Queue(name, Exchange(name), routing_key=name) for name in queues()],
        "task_default_queue": defaults.TOOLS_QUEUE,
        "task_routes": {task_name(step): {"queue": queue} for step, queue in defaults.STEP_QUEUES.items()},
    }


def make_celery(main: str, settings: Settings | None = None) -> Celery:
    # Task reprs, task events and task log lines without user text (shared.redaction); `task-sent`
    # batched with a worker's own task events (shared.sent_events).
    app = Celery(main, amqp="shared.sent_events:BatchingAMQP", task_cls="shared.redaction:RedactingTask")
    app.conf.update(celery_config(settings or get_settings()))
    return app
