"""redis-py's readiness checks under gevent, through the operating system's poll.

Before every command, redis-py checks that the connection it takes from a pool holds no unread
data (`ConnectionPool.get_connection` -> `can_read()`, a poll with a timeout of 0). Under gevent,
`select.poll` is gevent's: a Python object that starts a watcher per file descriptor and runs
the hub to learn what the kernel already knows, 14 us per check on our 2-core machines against
0.8 us for the kernel's poll (py-spy: 6-8 % of the tools worker's CPU on idle turns;
bench/README.md, capacity). A poll that waits for nothing cannot block the hub, so those
checks may go straight to the kernel; a poll that waits (a pub/sub read with a timeout) must
stay gevent's, or it would stop every greenlet of the process.

Rules:
- Only a zero timeout takes the kernel's poll; every other call is gevent's, unchanged.
- Only redis-py's hiredis parser is pointed at this (its module's `select`); nothing else in a
  process changes, and in a process gevent has not patched, `install` does nothing.

`install()` is called where a gevent process starts its work: the web app (gunicorn's gevent
workers patch before they load it) and a worker whose pool is gevent (workers.celery_app).

Rejected: a connection class that answers the check without polling. redis-py 8.1 computes the
check and then, with its maintenance notifications on `auto` (the default), does not act on it;
a version or a setting that does act on it (a connection a timeout left half-read must not
answer the next command with the last one's reply) must still get a true answer."""

import select
from types import ModuleType
from typing import Callable


class _Poll:
    """select.poll's interface, choosing the poll implementation when it is asked to wait."""

    def __init__(self, kernel_poll: Callable[[], object], gevent_poll: Callable[[], object]):
        self._kernel_poll, self._gevent_poll = kernel_poll, gevent_poll
        self._registered: list[tuple[object, int]] = []

    def register(self, fd: object, eventmask: int = select.POLLIN | select.POLLPRI | select.POLLOUT) -> None:
        self._registered.append((fd, eventmask))

    def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
        poller = (self._kernel_poll if timeout == 0 else self._gevent_poll)()
        for fd, eventmask in self._registered:
            poller.register(fd, eventmask)
        return poller.poll(timeout)


class _SelectModule:
    """The `select` module as redis-py's parser sees it: `poll` is _Poll, the rest is select's."""

    def __init__(self, patched: ModuleType, kernel_poll: Callable[[], object]):
        self._patched, self._kernel_poll = patched, kernel_poll

    def poll(self) -> _Poll:
        return _Poll(self._kernel_poll, self._patched.poll)

    def __getattr__(self, name: str) -> object:
        return getattr(self._patched, name)


def install() -> bool:
    """Point redis-py's hiredis parser at the kernel's poll for zero-timeout checks, if gevent
    has patched `select` in this process. Idempotent; True if installed (now or before)."""
    try:
        from gevent import monkey
        from redis._parsers import hiredis
    except ImportError:
        return False
    if isinstance(hiredis.select, _SelectModule):
        return True
    if not monkey.is_module_patched("select"):
        return False
    hiredis.select = _SelectModule(hiredis.select, monkey.get_original("select", "poll"))
    return True
