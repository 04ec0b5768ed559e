"""Step time limits in every pool: the pool interrupts a step where it can, a watchdog where it cannot.

Rule: a step that runs past TURNSTREAM_TASK_TIME_LIMIT_S ends its turn with an `error` event
naming the step and the limit, whatever pool runs it:
- prefork: Celery's own limits. The soft limit raises SoftTimeLimitExceeded inside the step,
  which fails its turn like any error; the hard limit kills the child and Celery calls the
  chain's errback with TimeLimitExceeded.
- gevent: Celery's gevent pool runs each step under a gevent.Timeout of the hard limit; the
  greenlet is killed and the errback called the same way (no soft limit there).
- threads (and any pool that cannot interrupt a thread): this module. Each worker process runs
  one watchdog thread that knows every running step's deadline; a step past it gets its turn
  failed, and nothing waits on it any more: the stream ends, the status is final, and when the
  stuck call finally returns, its step finds the turn final and stops (the transitions refuse
  to leave `failed`). Its thread stays busy until then; the reasoner's and the MCP client's own
  timeouts bound how long.

Rejected: raising an exception in the stuck thread (PyThreadState_SetAsyncExc). It is only
seen between bytecodes, so it cannot interrupt what steps get stuck in (a socket read, a
llama.cpp call), and when it does land it can do so inside a lock or a `finally`.
Rejected: running every step in prefork. The llm worker would load its model once per child,
and the tools worker would need one MCP session per child instead of one per process.

Each running step also keeps its own clock (`started`, `time_left`): a step that waits out a
broker outage (workers.steps.with_broker) hands its message back before its limit instead of
being failed by it, since an outage is no fault of the turn."""

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from shared.settings import get_settings

log = logging.getLogger(__name__)
TICK_S = 0.25
POOLS_THAT_INTERRUPT = ("prefork", "gevent", "eventlet")


@dataclass(frozen=True)
class Watched:
    session_id: str
    message_id: str
    step: str
    deadline: float


class Watchdog:
    """The running steps of one worker process and the thread that checks their deadlines."""

    def __init__(self, limit_s: float, on_expiry: Callable[[Watched, float], None]):
        self.limit_s = limit_s
        self.on_expiry = on_expiry
        self._running: dict[str, Watched] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="step-time-limits", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def add(self, task_id: str, session_id: str, message_id: str, step: str) -> None:
        with self._lock:
            self._running[task_id] = Watched(session_id, message_id, step, time.monotonic() + self.limit_s)

    def discard(self, task_id: str) -> None:
        with self._lock:
            self._running.pop(task_id, None)

    def expired(self, now: float) -> list[Watched]:
        """Steps past their deadline, no longer watched (each turn is failed once)."""
        with self._lock:
            late = {task_id: w for task_id, w in self._running.items() if w.deadline <= now}
            for task_id in late:
                del self._running[task_id]
        return list(late.values())

    def _watch(self) -> None:
        while True:
            time.sleep(TICK_S)
            for watched in self.expired(time.monotonic()):
                try:
                    self.on_expiry(watched, self.limit_s)
                except Exception:  # noqa: BLE001 - the watchdog must outlive any one failure
                    log.exception("could not fail turn %s/%s past its time limit", watched.session_id,
                                  watched.message_id)


_watchdog: Watchdog | None = None


def pool_interrupts(pool_cls: object) -> bool:
    """Can this Celery pool interrupt a running step itself (and so enforce the limits)?"""
    name = f"{getattr(pool_cls, '__module__', '')}.{getattr(pool_cls, '__name__', pool_cls)}"
    return any(pool in name for pool in POOLS_THAT_INTERRUPT)


def start(limit_s: float, on_expiry: Callable[[Watched, float], None]) -> Watchdog:
    """Watch this process's steps (called once per worker process whose pool cannot interrupt)."""
    global _watchdog
    if _watchdog is None:
        _watchdog = Watchdog(limit_s, on_expiry).start()
        log.info("step time limit %gs enforced by the watchdog (this pool cannot interrupt a step)", limit_s)
    return _watchdog


def holds_limits() -> bool:
    """Does the watchdog hold this process's step time limits (a pool that cannot interrupt)? Then
    each step run in a task gets a deadline of its own (`watch` again), wherever in the task it starts."""
    return _watchdog is not None


def watch(task_id: str, session_id: str, message_id: str, step: str) -> None:
    """Watch the step `task_id` runs now, from now: called again for a later step of the same task,
    it gives that step a full limit of its own."""
    if _watchdog is not None:
        _watchdog.add(task_id, session_id, message_id, step)


def unwatch(task_id: str) -> None:
    if _watchdog is not None:
        _watchdog.discard(task_id)


# The running step's start, per thread (per greenlet under gevent, whose monkey patching makes
# threading.local greenlet-local).
_clock = threading.local()


def started(task_start: bool) -> None:
    """The running step's limit counts from now: at a task's start, and at a step run inside the
    task (workers.steps.step_here) only where the watchdog gives such a step a limit of its own."""
    if task_start or holds_limits():
        _clock.started = time.monotonic()


def ended() -> None:
    _clock.started = None


_soft_limit_acts = True  # until the worker says which pool it runs (enforced_by)


def enforced_by(pool_forks: bool) -> None:
    """Which limit stops a step in this worker: prefork raises the soft one inside the step; gevent
    and the watchdog act only at the hard one (see above), so a step may run on past the soft one."""
    global _soft_limit_acts
    _soft_limit_acts = pool_forks


def limit_s() -> float:
    """The limit that stops a running step in this worker."""
    settings = get_settings()
    if _soft_limit_acts:
        return min(settings.task_soft_time_limit_s, settings.task_time_limit_s)
    return settings.task_time_limit_s


def time_left() -> float | None:
    """Seconds until the limit that stops the running step (limit_s), or None outside a step."""
    begun = getattr(_clock, "started", None)
    if begun is None:
        return None
    return begun + limit_s() - time.monotonic()


# --- waiting for the broker inside a step ---------------------------------------------------
BROKER_POLL_S = 0.5


def hand_back_margin_s() -> float:
    """How long one more try against a broker that hangs can take (a connect, then a script and
    its fallback read, each up to the socket timeout), plus a poll: a step stops trying this
    long before its time limit."""
    settings = get_settings()
    return settings.redis_connect_timeout_s + 2 * settings.redis_socket_timeout_s + BROKER_POLL_S


def broker_deadline() -> float:
    """Until when (time.monotonic) a step may wait for the broker: TURNSTREAM_WORKER_BROKER_WAIT_S
    from now, or a hand-back margin before the running step's time limit if that comes first."""
    deadline = time.monotonic() + get_settings().worker_broker_wait_s
    left = time_left()
    if left is not None:
        deadline = min(deadline, time.monotonic() + left - hand_back_margin_s())
    return deadline


def stop_sending_near_the_limit(exc: Exception, interval: float) -> None:
    """kombu's errback for a send that failed (the workers' publish retry policy): give up once
    the next try could run into the sending step's time limit. kombu counts retries, not time,
    and each may first wait out a connect and a socket timeout. Outside a step it never gives up
    early. Raises kombu's OperationalError, which the step's caller takes as an outage."""
    from kombu.exceptions import OperationalError

    left = time_left()
    if left is not None and left - interval <= 2 * hand_back_margin_s():
        raise OperationalError(f"the broker is still unreachable near the step's time limit: {exc}") from exc
