"""Every built-in tool call runs in a child process under a CPU-time and a memory limit.

The tool server is one asyncio process serving every tenant's calls. A call that computes
(big-integer arithmetic, a regex, a parser) holds the GIL, and while it does, no other call
in that process makes progress: one tenant's runaway call would time out everyone's. So the
tools' own code runs in a pool of child processes (pebble's ProcessPool, started through a
forkserver so that no thread of the server is forked), and each call gets:

- a CPU-time limit (`TURNSTREAM_TOOL_CPU_S`): RLIMIT_CPU is set, per call, to the CPU the child
  has used so far plus the limit; past it the kernel kills the child (SIGXCPU);
- a memory limit (`TURNSTREAM_TOOL_MEMORY_MB`): RLIMIT_AS, so an allocation past it fails with
  MemoryError inside the call instead of swapping the host;
- a wall-clock limit (`TURNSTREAM_TOOL_WALL_S`), after which pebble kills the child.

A killed child fails only its own call, with a ToolFailure saying which limit it hit; pebble
starts a replacement and the other calls, in the other children, go on. The simulated
upstream latency stays an `await` in the server, so waiting costs no child.

Rejected: a process per call (forked from the forkserver it still costs about 170 ms a call on
a loaded 2-core machine, against under 1 ms for a pool dispatch: bench/tool_sandbox.py), and
threads with a timeout (a thread holding the GIL cannot be stopped, which is the problem itself)."""

import asyncio
import logging
import math
import multiprocessing
import resource
import threading
from concurrent.futures import TimeoutError as WallTimeout
from typing import Any, Callable

from pebble import ProcessExpired, ProcessPool

from shared.settings import get_settings
from workers.toolserver.tools import ToolFailure

log = logging.getLogger(__name__)
_pool: ProcessPool | None = None
_pool_lock = threading.Lock()


def _limit_child(memory_bytes: int) -> None:
    """In each child, once: cap its address space, and write no core file when it is killed."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _call_with_cpu_limit(cpu_s: float, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """In the child: allow `cpu_s` more seconds of CPU than it has used, then run the tool.
    RLIMIT_CPU counts a process's whole life, so the limit is moved forward for each call."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + cpu_s)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    try:
        return fn(*args, **kwargs)
    except MemoryError:
        raise ToolFailure(f"stopped: it needed more than {get_settings().tool_memory_mb} MB of memory") from None


def pool() -> ProcessPool:
    """The process's pool, started on first use."""
    global _pool
    with _pool_lock:
        if _pool is None or not _pool.active:
            settings = get_settings()
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["workers.toolserver.tools"])
            _pool = ProcessPool(max_workers=settings.tool_processes, initializer=_limit_child,
                                initargs=(settings.tool_memory_mb * 1024 * 1024,), context=context)
        return _pool


async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a child under the limits; a limit hit raises ToolFailure."""
    settings = get_settings()
    future = pool().schedule(_call_with_cpu_limit, args=(settings.tool_cpu_s, fn, args, kwargs),
                             timeout=settings.tool_wall_s)
    name = getattr(fn, "__name__", "the tool")
    try:
        return await asyncio.wrap_future(future)
    except ProcessExpired as exc:
        log.warning("%s killed (exit code %s): over its CPU or memory limit", name, exc.exitcode)
        raise ToolFailure(f"{name} was stopped: it used more than {settings.tool_cpu_s:g} s of CPU time "
                          "(or its process died)") from None
    except WallTimeout:
        raise ToolFailure(f"{name} was stopped: it ran longer than {settings.tool_wall_s:g} s") from None
