"""One asyncio event loop in its own OS thread, which threads or greenlets submit coroutines to.

The MCP SDK is asyncio-only. A worker's pool (threads, or gevent greenlets) is not, and
`asyncio.run` per call would spawn a stdio server each time (0.5-1 s) and cannot run under
gevent at all. So each worker process runs one loop here and keeps its sessions on it.

Under gevent's monkey-patching the loop thread must stay a real thread with real I/O:
- it is started with the original `start_new_thread`, and polls with the original selector;
- asyncio's subprocess support gets an unpatched copy of `subprocess` (gevent's Popen only
  works on the main thread's hub) and reaps children through pidfds;
- blocking helpers (getaddrinfo) run on native threads, not greenlets of a hub nobody runs;
- a greenlet waiting for a result is woken through a gevent async watcher, the one
  cross-thread signal gevent supports, so it yields instead of blocking its whole hub."""

import asyncio
import concurrent.futures
import importlib.util
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("threading")


def _original(module: str, name: str) -> Any:
    from gevent import monkey

    return monkey.get_original(module, name)


def _start_native_thread(target) -> None:
    if gevent_patched():
        _original("_thread", "start_new_thread")(target, ())
    else:
        threading.Thread(target=target, name="mcp-loop", daemon=True).start()


class _NativeThreadExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor under gevent: each job on a real thread (they are rare: DNS)."""

    def submit(self, fn, /, *args, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()

        def work() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                future.set_exception(exc)

        _start_native_thread(work)
        return future


_subprocess_fixed = False


def _unpatch_asyncio_subprocess() -> None:
    """Give asyncio a fresh, unpatched `subprocess` module (once per process)."""
    global _subprocess_fixed
    if _subprocess_fixed:
        return
    import asyncio.unix_events as unix_events

    spec = importlib.util.spec_from_file_location("_turnstream_native_subprocess", subprocess.__file__)
    native = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(native)
    unix_events.subprocess = native
    _subprocess_fixed = True


def _new_loop() -> asyncio.AbstractEventLoop:
    if not gevent_patched():
        return asyncio.new_event_loop()
    _unpatch_asyncio_subprocess()
    loop = asyncio.SelectorEventLoop(_original("selectors", "DefaultSelector")())
    loop.set_default_executor(_NativeThreadExecutor())
    return loop


def _install_child_watcher(loop: asyncio.AbstractEventLoop) -> None:
    """Python < 3.14 needs a child watcher; a pidfd one needs no helper thread (Linux >= 5.3)."""
    watcher_cls = getattr(asyncio, "PidfdChildWatcher", None)
    if watcher_cls is None or not gevent_patched():
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        watcher = watcher_cls()
        asyncio.set_child_watcher(watcher)
        watcher.attach_loop(loop)


class LoopThread:
    """A running event loop on its own thread, bound to the process that started it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = _new_loop()
        self._started = concurrent.futures.Future()
        _start_native_thread(self._run)
        self._started.result(timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        _install_child_watcher(self.loop)
        self.loop.call_soon(self._started.set_result, True)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    @property
    def alive(self) -> bool:
        return self.pid == os.getpid() and self.loop.is_running()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float,
            every: tuple[float, Callable[[], None]] | None = None) -> T:
        """Run `coro` on the loop and wait for its result; the coroutine is cancelled on timeout.

        `every` = (seconds, fn) calls fn in the waiting thread or greenlet that often while it
        waits: work that must not run on the loop (a Redis publish through the caller's pool)
        is done there, between waits."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return _wait(future, timeout, every)
        except TimeoutError:
            future.cancel()
            raise

    def stop(self) -> None:
        if self.alive:
            self.loop.call_soon_threadsafe(self.loop.stop)


def _wait(future: concurrent.futures.Future, timeout: float,
          every: tuple[float, Callable[[], None]] | None = None):
    """The future's result, waiting at most `timeout`; calls every[1] each every[0] seconds meanwhile."""
    deadline = time.monotonic() + timeout
    tick, on_tick = every or (timeout, None)
    waiter = _GeventWaiter(future) if gevent_patched() else _NativeWaiter(future)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no result within {timeout:.1f}s")
            if waiter.wait(min(tick, remaining)):
                return future.result(timeout=0)
            if on_tick is not None:
                on_tick()
    finally:
        waiter.close()


class _NativeWaiter:
    def __init__(self, future: concurrent.futures.Future):
        self.future = future

    def wait(self, seconds: float) -> bool:
        done, _ = concurrent.futures.wait([self.future], timeout=seconds)
        return bool(done)

    def close(self) -> None:
        pass


class _GeventWaiter:
    """Under gevent the loop thread wakes the waiting greenlet through an async watcher (the one
    cross-thread signal gevent supports), so waiting yields instead of blocking the hub."""

    def __init__(self, future: concurrent.futures.Future):
        from gevent.event import Event
        from gevent.hub import get_hub

        self.future = future
        self._finished = Event()
        self._watcher = get_hub().loop.async_()
        self._watcher.start(self._finished.set)
        future.add_done_callback(lambda _done: self._watcher.send())

    def wait(self, seconds: float) -> bool:
        return self._finished.wait(timeout=seconds) or self.future.done()

    def close(self) -> None:
        self._watcher.stop()
        self._watcher.close()
