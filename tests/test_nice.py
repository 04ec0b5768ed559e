"""Workers yield the CPU to the web tier (shared.nice), so a busy machine still shows a new turn at
once. Checked as an operator would, with what `ps -L -o ni` and /proc/<pid>/autogroup show: every
thread of a worker at TURNSTREAM_WORKER_NICE, its session too where the kernel groups sessions,
and the web tier and the Redis servers as they were. What it buys is measured in
bench/capacity.py (bench/README.md), never asserted here."""

import os
import subprocess
import sys

import psutil

from shared import defaults
from shared.cli.processes import REPO_ROOT
from shared.nice import session_nice
from tests.sse import post_prompt, read_stream


def thread_nices(pid: int) -> set[int]:
    return {os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def test_a_worker_runs_below_the_web_tier_and_redis(stack, base_url, session_id):
    # After a turn, so the worker's pool threads and its MCP loop thread all exist.
    body = post_prompt(base_url, session_id, "calculate 6 * 7 + 1").json()
    assert read_stream(base_url, body["stream_url"])[-1].type == "done"

    worker = stack.workers[0].process.pid
    assert len(os.listdir(f"/proc/{worker}/task")) > 2
    assert thread_nices(worker) == {defaults.WORKER_NICE}
    web = [stack.web.process.pid, *(c.pid for c in psutil.Process(stack.web.process.pid).children())]
    redis_servers = [server.process.pid for server in stack.redis.values()]
    for pid in web + redis_servers:
        assert thread_nices(pid) == {0}, pid
    if session_nice(worker) is not None:  # no autogroup: a kernel without it, or a CPU cgroup
        assert session_nice(worker) == defaults.WORKER_NICE
        assert {session_nice(pid) for pid in web + redis_servers} == {0}


def yield_cpu_in_a_child(nice: int) -> list[int]:
    """A child in this process's session (as a worker started from a shell is) yields the CPU and
    prints its threads' nice values and its session's."""
    code = ("import os, threading, time; from shared import nice\n"
            "threading.Thread(target=time.sleep, args=(2,), daemon=True).start()\n"
            f"nice.yield_cpu({nice})\n"
            "print(*sorted({os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir('/proc/self/task')}),"
            " nice.session_nice())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_a_worker_started_from_a_shell_leaves_the_shells_session_alone():
    before = session_nice(os.getpid())
    *threads, child_session = yield_cpu_in_a_child(5)
    assert threads == ["5"]  # both of its threads
    assert child_session == str(before) and session_nice(os.getpid()) == before
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0  # this process, the child's parent, untouched


def test_nice_zero_leaves_the_process_as_it_is():
    *threads, _ = yield_cpu_in_a_child(0)
    assert threads == ["0"]
