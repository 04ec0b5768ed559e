"""The workers' Celery app. Each process checks the Redis eviction policies before it takes work,
and opens its MCP sessions after fork, never before (a loop thread and pipes do not survive one)."""

import logging
import threading

from celery._state import _set_task_join_will_block
from celery.signals import (task_postrun, task_received, worker_init, worker_process_init, worker_process_shutdown,
                            worker_ready, worker_shutdown)

from shared import gevent_polls, nice
from shared.broker_channel import transport_for
from shared.celery_config import make_celery
from shared.defaults import DISCOVER_QUEUE, TOOLS_QUEUE
from shared.eviction import EvictingStoreError, check_evictions
from shared.redis_stores import StoreTooOld, check_broker_version
from shared.settings import get_settings
from workers import telemetry  # noqa: F401  (connects the logging, metrics and tracing signals)
from workers import time_limits
from workers.redelivery import beat_forever, sweep_forever

app = make_celery("turnstream")
app.conf.include = ["workers.tasks"]
# The web tier gives up on a dead broker at once (503); a worker sending a turn's next step
# waits for the broker to return instead, so an accepted turn is not dropped mid-chain.
app.conf.broker_transport = transport_for(get_settings().store_target("broker").sentinel, "workers.broker_transport")
# Never into the sending step's time limit, though (workers.time_limits): there the step hands
# its message back instead (workers.steps.forward), or the chain's errback leaves the turn to
# the redelivery sweeper, rather than the limit failing the turn for the outage.
app.conf.task_publish_retry_policy = {"max_retries": int(get_settings().worker_broker_wait_s),
                                      "interval_start": 0, "interval_step": 0.5, "interval_max": 1.0,
                                      "errback": time_limits.stop_sending_near_the_limit}
# The same for the result backend (also the broker): chords keep their counters there.
app.conf.result_backend_always_retry = True
app.conf.result_backend_max_retries = int(get_settings().worker_broker_wait_s)
# A prefork child opens its MCP sessions before it reports itself up; on a busy host that takes
# longer than Celery's 4 s default, and a child replacing a killed one would be killed in turn, in a loop.
app.conf.worker_proc_alive_timeout = get_settings().mcp_connect_timeout_s + 10

log = logging.getLogger(__name__)


@worker_init.connect
def _yield_cpu_to_the_web_tier(**_: object) -> None:
    """Steps wait in the broker's queues rather than the POST for a core (shared.nice)."""
    nice.yield_cpu(get_settings().worker_nice)


@worker_init.connect
def _kernel_polls_for_redis_checks(**_: object) -> None:
    """Under the gevent pool, redis-py's zero-timeout checks skip gevent's poll (shared.gevent_polls)."""
    gevent_polls.install()


@worker_init.connect
def _refuse_evicting_redis(**_: object) -> None:
    # Celery logs and swallows exceptions from signal handlers; SystemExit is what stops the worker.
    try:
        check_evictions()
        check_broker_version()
    except (EvictingStoreError, StoreTooOld) as exc:
        log.critical("refusing to start: %s", exc)
        raise SystemExit(f"refusing to start: {exc}") from exc


def _forks(worker: object) -> bool:
    pool = getattr(worker, "pool_cls", None)
    return "prefork" in f"{getattr(pool, '__module__', '')}{pool}"


def consumes(*queues: str) -> bool:
    """Does this worker take messages from any of `queues`? (Without -Q it takes every queue.)"""
    selected = app.amqp.queues.consume_from
    return not selected or bool(set(queues) & set(selected))


def _takes_tool_calls() -> bool:
    """Only workers on the tools or discover queue talk to MCP servers; an llm-only worker opens no session."""
    return consumes(DISCOVER_QUEUE, TOOLS_QUEUE)


def _open_mcp_sessions() -> None:
    from workers.mcp.client import mcp_client

    if not _takes_tool_calls():
        return

    try:
        client = mcp_client()
        tools = client.list_tools()
        log.info("MCP: %d tools from %s", len(tools), ", ".join(client.servers))
    except Exception as exc:  # noqa: BLE001 - a broken server must not stop the worker; discover reports it
        log.error("MCP: cannot open sessions: %s", exc)


@worker_init.connect
def _mcp_for_pools_without_fork(sender=None, **_: object) -> None:
    if not _forks(sender):
        _open_mcp_sessions()


@worker_ready.connect
def _never_wait_on_results(**_: object) -> None:
    """No step waits on another's result, so a worker never subscribes to the results of what it
    sends, as Celery already has it in prefork children and the threads pool. The gevent pool
    says otherwise when it starts (Celery sets the flag from the pool after worker_init, hence
    worker_ready), and then every call_tool it sends subscribes to its result channel on the
    broker: a wasted round trip each, and during a broker outage a wait of up to the result
    backend's retries inside the send, which the step's time limit does not bound."""
    _set_task_join_will_block(True)


@task_postrun.connect
def _step_clock_stops(**_: object) -> None:
    """The task is over, chain callbacks sent: its step clock (workers.time_limits) stops."""
    time_limits.ended()


@worker_init.connect
def _watch_time_limits_where_the_pool_cannot(sender=None, **_: object) -> None:
    """Threads cannot be interrupted: a watchdog fails their steps' turns at the hard limit
    (workers.time_limits); prefork and gevent enforce Celery's limits themselves."""
    time_limits.enforced_by(pool_forks=_forks(sender))
    if time_limits.pool_interrupts(getattr(sender, "pool_cls", None)):
        return
    from workers.steps import fail_past_time_limit

    time_limits.start(get_settings().task_time_limit_s, fail_past_time_limit)


@worker_process_init.connect
def _mcp_after_fork(**_: object) -> None:
    _open_mcp_sessions()


def _start_beating() -> None:
    """This process runs steps: it beats (shared.liveness), publishes its outbox and watches for
    dead workers (workers.redelivery). The first beat comes before the first step."""
    from shared import liveness
    from shared.redis_stores import client

    try:
        liveness.beat(client("broker"))
    except Exception as exc:  # noqa: BLE001 - the thread keeps trying
        log.warning("first heartbeat failed: %r", exc)
    threading.Thread(target=beat_forever, args=(app,), name="liveness", daemon=True).start()


@worker_init.connect
def _beat_in_the_main_process(**_: object) -> None:
    """The main process receives the messages (every pool) and runs them (threads, gevent)."""
    _start_beating()


@task_received.connect
def _note_received(request=None, **_: object) -> None:
    """Until its step claims the turn, a received message is this process's to account for
    (noted beside the task's start, not before it: workers.received_notes)."""
    from shared.turn_flow import turn_of
    from workers import received_notes

    turn = turn_of(getattr(request, "args", None))
    if turn.get("session_id") and turn.get("message_id"):
        received_notes.note(turn["session_id"], turn["message_id"])


@worker_process_init.connect
def _beat_after_fork(**_: object) -> None:
    _start_beating()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _close_mcp_sessions(**_: object) -> None:
    from workers.mcp.client import close_mcp_client

    close_mcp_client()


@worker_ready.connect
def _batch_task_events(sender=None, **_: object) -> None:
    """Flower's task events, published in batches (workers.task_events)."""
    from workers.task_events import batch_task_events

    if sender is not None and get_settings().task_events:
        batch_task_events(sender)


@worker_ready.connect
def _start_redelivery_sweeper(**_: object) -> None:
    """Each worker process sweeps for turns whose messages were lost (a broker lock keeps it to one at a time)."""
    threading.Thread(target=sweep_forever, args=(app,), name="redelivery-sweeper", daemon=True).start()
