"""Logs, metrics and traces for the workers, all hung on Celery signals so the tasks stay plain.

- `setup_logging`: JSON logs (connecting to it stops Celery from installing its own handlers).
- `worker_init`: OpenTelemetry when OTEL_* asks for it, and a /metrics port when configured.
- `task_prerun` / `task_postrun`: the log context (session, message, task ids) and each step's
  duration in `turnstream_step_duration_seconds`; a step a task runs after its own
  (workers.steps.step_here) is timed and named on its own (`switch_step`). Turn outcomes are counted where the status
  becomes final (shared.turns), so a cancel from the web tier counts too."""

import logging
import threading
import time

from celery.signals import setup_logging, task_postrun, task_prerun, worker_init, worker_shutdown
from prometheus_client import start_http_server

from shared import logs, metrics, tracing
from shared.settings import get_settings
from shared.turn_flow import step_of, task_name, turn_of

log = logging.getLogger(__name__)

_started: dict[str, tuple[float, str, list]] = {}
_lock = threading.Lock()


def turn_ids(args: tuple | list | None) -> dict[str, str | None]:
    """The session and message ids of a step's turn, for the log context."""
    turn = turn_of(args)
    return {"session_id": turn.get("session_id"), "message_id": turn.get("message_id")}


# Celery's per-task lines: "Task ... received" and "Task ... succeeded in ...: <result repr>".
PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


@setup_logging.connect
def _json_logs(loglevel: int | str | None = None, **_: object) -> None:
    level = logging.getLevelName(loglevel.upper()) if isinstance(loglevel, str) else loglevel
    level = level or logging.INFO
    logs.configure_logging("worker", level=level)
    # Two lines per task at info, one with the result's repr, cost a busy worker more than the
    # step's own logging; they stay at debug (-l debug). Failures are logged as errors whatever the level.
    for name in PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(level if level <= logging.DEBUG else logging.WARNING)


@worker_init.connect
def _start_telemetry(**_: object) -> None:
    tracing.setup_tracing("worker")
    port = get_settings().worker_metrics_port
    if port:
        start_http_server(port, registry=metrics.registry())
        log.info("worker metrics on :%d/metrics", port)


@worker_shutdown.connect
def _flush_traces(**_: object) -> None:
    tracing.shutdown()


@task_prerun.connect
def _step_started(task_id: str | None = None, task=None, args=None, **_: object) -> None:
    if task_id is None or task is None:
        return
    tokens = logs.bind(task_id=task_id, task_name=task.name, **turn_ids(args))
    with _lock:
        _started[task_id] = (time.perf_counter(), step_of(task.name), tokens)


def switch_step(task_id: str | None, step: str) -> None:
    """The task goes on with the turn's next step (workers.steps.step_here): the step it ran so far
    ends now (it handed over, so ok), and the log context names the step it runs from now on."""
    with _lock:
        started = _started.get(task_id)
        if started is None:
            return
        began, previous, tokens = started
        now = time.perf_counter()
        _started[task_id] = (now, step, tokens + logs.bind(task_name=task_name(step)))
    metrics.observe_step(previous, now - began, ok=True)


@task_postrun.connect
def _step_finished(task_id: str | None = None, task=None, state: str | None = None, **_: object) -> None:
    with _lock:
        started = _started.pop(task_id, None)
    if started is None or task is None:
        return
    began, step, tokens = started
    metrics.observe_step(step, time.perf_counter() - began, ok=state == "SUCCESS")
    logs.unbind(tokens)
