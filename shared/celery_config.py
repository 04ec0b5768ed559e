"""The Celery configuration both tiers share: workers run the tasks, the web tier only sends them.

JSON only on the wire. At-least-once delivery: late acks, reject on a lost worker,
prefetch 1, and time limits below the broker's visibility timeout."""

from celery import Celery, chain
from kombu import Exchange, Queue

from shared import defaults
from shared.events import STEPS
from shared.settings import Settings, get_settings

TASK_PREFIX = "turnstream"


def task_name(step: str) -> str:
    return f"{TASK_PREFIX}.{step}"


def queues() -> tuple[str, ...]:
    """Every queue a step is routed to; a worker started without -Q consumes them all."""
    return tuple(dict.fromkeys(defaults.STEP_QUEUES.values()))


def celery_config(settings: Settings) -> dict:
    transport = {"visibility_timeout": settings.visibility_timeout_s}
    return {
        "broker_url": settings.role_url("broker"),
        "result_backend": settings.role_url("broker"),
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_expires": 3600,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        # LLM-bound and tool-bound steps on their own queues, so each kind of worker scales alone.
        "task_queues": [Queue(name, Exchange(name), routing_key=name) for name in queues()],
        "task_default_queue": defaults.STEP_QUEUES[STEPS[0]],
        "task_routes": {task_name(step): {"queue": queue} for step, queue in defaults.STEP_QUEUES.items()},
    }


def make_celery(main: str, settings: Settings | None = None) -> Celery:
    app = Celery(main)
    app.conf.update(celery_config(settings or get_settings()))
    return app


def turn_chain(app: Celery, turn: dict):
    """discover -> reason, by task name (the web tier never imports workers). `reason` then
    replaces itself with execute (tool calls, in parallel) and back, or with synthesize.
    Any task that fails ends the turn through the `turn_failed` errback, which every task
    of the chain, and every task it is replaced by, carries."""
    errback = app.signature(task_name("turn_failed"), args=(turn["session_id"], turn["message_id"]))
    flow = chain(app.signature(task_name("discover"), args=(turn,)), app.signature(task_name("reason")))
    return flow.on_error(errback)
