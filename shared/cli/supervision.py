"""Keeping `turnstream dev`'s workers alive: a worker that dies is started again, and what
killed it is said.

Rules: a Celery worker that exits while the system runs is restarted, with one line naming
the worker and the signal (or exit code) that ended it; a worker that keeps dying waits
longer before each restart (1 s, doubling up to 30 s, back to 1 s once it has run for a
minute). Its step in flight comes back to the queue (late acks) and runs again; a step that
kills its worker every time fails its turn after TURNSTREAM_MAX_DELIVERIES (shared.deliveries).
A Redis server or the web server that exits still stops everything, with the same kind of
line: the system cannot work without them, and restarting them would hide the cause.

Rejected: stopping everything when any child exits (one segfault in a model library took the
whole system down and the page could only show "Connection lost"); a separate process
manager (supervisord, honcho) for what is a development convenience: the mirakuru executors
already start, wait for and stop each child."""

import signal
import time
from dataclasses import dataclass, field
from typing import Callable

from mirakuru import SimpleExecutor
from mirakuru.exceptions import ProcessFinishedWithError

FIRST_PAUSE_S = 1.0
MAX_PAUSE_S = 30.0
STABLE_AFTER_S = 60.0


def exit_reason(returncode: int | None) -> str:
    """"was killed by SIGSEGV" or "exited with code 1"."""
    if returncode is None:
        return "stopped"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


@dataclass
class Child:
    name: str
    executor: SimpleExecutor
    restart: bool
    started_at: float = field(default_factory=time.monotonic)
    pause_s: float = FIRST_PAUSE_S
    restart_at: float | None = None


class Supervisor:
    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.children: list[Child] = []

    def add(self, name: str, executor: SimpleExecutor, restart: bool = False) -> SimpleExecutor:
        self.children.append(Child(name, executor, restart))
        return executor

    def check(self, now: float | None = None) -> str | None:
        """Restart dead workers; a message if a child that is not restarted has exited."""
        now = time.monotonic() if now is None else now
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    child.started_at = now
                    child.executor.start()
                continue
            if child.executor.running():
                continue
            reason = exit_reason(_reap(child.executor))
            if not child.restart:
                return f"the {child.name} {reason}"
            child.pause_s = FIRST_PAUSE_S if now - child.started_at >= STABLE_AFTER_S else child.pause_s
            self.say(f"the {child.name} {reason}; starting it again in {child.pause_s:g} s")
            child.restart_at = now + child.pause_s
            child.pause_s = min(child.pause_s * 2, MAX_PAUSE_S)
        return None

    def executors(self) -> list[SimpleExecutor]:
        return [child.executor for child in self.children]


def _reap(executor: SimpleExecutor) -> int | None:
    """The dead child's exit code; its leftovers are stopped and the executor made ready to start again."""
    process = executor.process
    returncode = process.poll() if process is not None else None
    try:
        executor.stop()
    except ProcessFinishedWithError:
        pass  # it had exited with an error: that is what we are reporting
    return returncode
