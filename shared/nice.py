"""Workers yield the CPU to the web tier, so a busy machine still shows a new turn at once.

Rule: a Celery worker process lowers its own CPU priority when it starts, to the nice value
`TURNSTREAM_WORKER_NICE` (default 10; 0 leaves it as it is). The web tier and the Redis servers
keep theirs. Nothing here raises a priority: that needs privileges, and lowering is enough.

Why. On shared cores with more turns than they can serve, the backlog builds up wherever the
scheduler runs least. With every process equal, the web process waited for a core behind the
workers' steps, and every round trip of a POST waited again: POST -> first SSE event had p50
297-549 ms at 32 callers on 2 cores, where the web tier's own work for it is under 20 ms
(bench/README.md, capacity.py). With the workers at nice 10 the same load gave p50 25-38 ms and
the same throughput: the backlog waits in the broker's queues, after the turn's `accepted` event,
where the user already sees the turn and its queued step. The cores do the same work either way.

How, on Linux:
- nice is per thread. Every thread the process has gets the value; threads started later
  inherit it from the thread that starts them.
- autogroup (`kernel.sched_autogroup_enabled`, on in most distributions, for processes outside
  a CPU cgroup) shares the CPU between sessions first, and a process's own nice ranks it only
  inside its session. A worker that leads its own session (`turnstream dev` and mirakuru start
  each process with setsid) also sets its session's nice in
  /proc/self/autogroup; measured here, the per-thread nice alone changed nothing. A worker started
  from a shell shares the shell's session and leaves the session alone, so the shell's other
  programs keep their priority.
- In a CPU cgroup (a container, a systemd service) the cgroup's CPU weight decides between
  cgroups, and nice only orders processes inside one: deploy/ gives the web tier the larger
  weight (compose `cpu_shares`, Kubernetes CPU requests); under systemd, `CPUWeight=`.
Elsewhere (macOS) the process's nice is set, which is what the platform has.

Rejected: `nice -n 10 celery ...` in each launcher. Every way of starting a worker (turnstream
dev, compose, k8s, a shell) would need it, and it does not reach the autogroup, which is what
decides. Rejected: a higher priority for the web tier, which needs CAP_SYS_NICE."""

import logging
import os
import re
import sys
from pathlib import Path

log = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")
THREADS = Path("/proc/self/task")


def yield_cpu(nice: int) -> None:
    """Lower this process's CPU priority to `nice` (never raise it); 0 leaves it alone."""
    if nice <= 0:
        return
    if sys.platform.startswith("linux"):
        for thread in THREADS.iterdir():
            _lower(int(thread.name), nice)
        if os.getsid(0) == os.getpid():
            _lower_session(nice)
    else:
        _lower(0, nice)


def _lower(thread_id: int, nice: int) -> None:
    try:
        if os.getpriority(os.PRIO_PROCESS, thread_id) < nice:
            os.setpriority(os.PRIO_PROCESS, thread_id, nice)
    except (ProcessLookupError, PermissionError):  # a thread that ended meanwhile; a locked-down host
        pass


def _lower_session(nice: int) -> None:
    current = session_nice()
    if current is None or current >= nice:
        return
    try:
        AUTOGROUP.write_text(str(nice))
    except OSError as exc:  # a read-only /proc
        log.debug("session nice not set: %s", exc)


def session_nice(pid: int | str = "self") -> int | None:
    """The nice of a process's session group, or None where no autogroup decides.

    The file reads "/autogroup-42 nice 0". It is empty for a process in the root group (one
    whose session was never split from init's, as under some CI runners and service
    managers) and absent on a kernel without autogroup: in both, no session nice applies."""
    try:
        found = re.search(r"nice (-?\d+)", Path(f"/proc/{pid}/autogroup").read_text())
    except OSError:
        return None
    return int(found.group(1)) if found else None
