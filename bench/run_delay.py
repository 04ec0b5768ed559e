"""Where a busy request's time goes, by process: running on a core, waiting for one, or neither.

Linux keeps, per thread, the nanoseconds it ran and the nanoseconds it sat runnable in a run
queue, waiting for a core (/proc/<pid>/task/<tid>/schedstat, fields 1 and 2). `Sampler` starts a
small process that reads them for the named processes every few milliseconds; `split` then
says, for any span the benchmark timed (a POST to its first SSE event), how much of it each
process spent running and how much waiting for a core.

How to read a split. A gevent web process serves every request from one thread, so for one
request's span:
- the web process's `wait` is time the request could not go on for want of a core (at most:
  the request may have been waiting on Redis at that moment);
- its `run` is the process's work in the span: this request's, and that of the requests and
  streams served ahead of it in the same loop;
- the rest is waiting on Redis (whose own `wait` and `run` are given beside it) or on the client.
A p99 made of `wait` needs cores, not code; one made of `run` needs less work per request or more
web processes.

The sampler runs in its own process, in the benchmark's session: sampling from a thread of the
benchmark would add the benchmark's own GIL and loop delays to the very waits it measures, and a
session of its own would take a share of the CPU from the processes measured (autogroup,
shared/nice.py). Its timestamps are `time.perf_counter()`, CLOCK_MONOTONIC on Linux, the
benchmark's clock. Rejected: `perf sched` and eBPF, which need privileges and tools this machine
does not have.
"""

import json
import subprocess
import sys
from dataclasses import dataclass

import numpy as np

INTERVAL_S = 0.004

# The sampler: per process, the running totals of every thread it has had (a thread that ends
# keeps what it added, so a total never goes down). One JSON document on stdout when stdin closes.
_SAMPLER = r"""
import json, os, select, sys, time
names = json.loads(sys.argv[1]); interval = float(sys.argv[2])
last = {}; totals = {name: [0, 0] for name in names}; samples = []
def read():
    for name, pids in names.items():
        for pid in pids:
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                        run, wait = map(int, f.read().split()[:2])
                except (OSError, ValueError):
                    continue
                before = last.get(tid, (run, wait))
                last[tid] = (run, wait)
                totals[name][0] += run - before[0]; totals[name][1] += wait - before[1]
    samples.append([time.perf_counter()] + [v for name in names for v in totals[name]])
while not select.select([sys.stdin], [], [], interval)[0]:
    read()
read()
json.dump({"names": list(names), "samples": samples}, sys.stdout)
"""


@dataclass
class Split:
    """One span's time, per process: ms running and ms waiting for a core."""
    run_ms: dict[str, float]
    wait_ms: dict[str, float]


class Sampler:
    """`with Sampler({"web": [pid], ...}) as s: ...`, then `s.split(start, end)` per span."""

    def __init__(self, processes: dict[str, list[int]], interval: float = INTERVAL_S):
        self.names = list(processes)
        self._process = subprocess.Popen([sys.executable, "-c", _SAMPLER, json.dumps(processes), str(interval)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.times = np.empty(0)
        self.totals = np.empty((0, 0))

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.times.size:
            return
        out, _ = self._process.communicate("", timeout=60)
        samples = np.array(json.loads(out)["samples"], dtype=float)
        self.times, self.totals = samples[:, 0], samples[:, 1:] / 1e6  # ns -> ms

    def _at(self, t: float) -> np.ndarray:
        return np.array([np.interp(t, self.times, column) for column in self.totals.T])

    def split(self, start: float, end: float) -> Split:
        delta = self._at(end) - self._at(start)
        return Split({name: delta[2 * i] for i, name in enumerate(self.names)},
                     {name: delta[2 * i + 1] for i, name in enumerate(self.names)})

    def shares(self, start: float, end: float) -> Split:
        """Over a whole window: the fraction of it each process ran, and waited for a core."""
        whole = self.split(start, end)
        span = (end - start) * 1000
        return Split({k: v / span for k, v in whole.run_ms.items()}, {k: v / span for k, v in whole.wait_ms.items()})


def describe(sampler: Sampler, spans: list[tuple[float, float]], label: str) -> list[str]:
    """Lines for a report: the median and the slowest 1 % of `spans`, each process's mean run and
    wait inside them; `label` names what a span is."""
    ordered = sorted(spans, key=lambda s: s[1] - s[0])
    n = len(ordered)
    groups = {"p45-p55": ordered[int(n * 0.45):max(int(n * 0.55), int(n * 0.45) + 1)],
              "slowest 1 %": ordered[min(int(n * 0.99), n - 1):]}
    lines = []
    for name, group in groups.items():
        splits = [sampler.split(a, b) for a, b in group]
        mean_span = sum(b - a for a, b in group) / len(group) * 1000
        parts = ", ".join(f"{proc} run {np.mean([s.run_ms[proc] for s in splits]):.1f} / wait "
                          f"{np.mean([s.wait_ms[proc] for s in splits]):.1f}" for proc in sampler.names)
        lines.append(f"  {label}, {name} ({len(group)} of {n}, mean {mean_span:.1f} ms), ms per span: {parts}")
    return lines
