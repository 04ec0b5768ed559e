"""What running each built-in tool call in a limited child process costs, and the alternative.

Times one `calculator("6 * 7 + 1")` call three ways, in the same run: in the server's own process
(no isolation, the baseline), through the sandbox's pool of children (workers/toolserver/sandbox.py,
what the tool server does), and in a fresh child process per call (forkserver, the rejected
alternative). Prints median and p99 of each and their ratio to the baseline.

    python bench/tool_sandbox.py [--calls 300]
"""

import argparse
import asyncio
import multiprocessing
import time

from _common import summary  # noqa: E402  (puts the repo on sys.path)

from workers.toolserver import sandbox, tools

EXPRESSION = "6 * 7 + 1"


def in_process(calls: int) -> list[float]:
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        tools.calculator(EXPRESSION)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def through_pool(calls: int) -> list[float]:
    async def run() -> list[float]:
        await sandbox.run(tools.calculator, EXPRESSION)  # start the pool outside the timings
        timings = []
        for _ in range(calls):
            started = time.perf_counter()
            await sandbox.run(tools.calculator, EXPRESSION)
            timings.append((time.perf_counter() - started) * 1000)
        return timings
    return asyncio.run(run())


def _child(conn) -> None:
    conn.send(tools.calculator(EXPRESSION))
    conn.close()


def process_per_call(calls: int) -> list[float]:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["workers.toolserver.tools"])
    timings = []
    for _ in range(calls + 1):
        started = time.perf_counter()
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_child, args=(sender,))
        child.start()
        receiver.recv()
        child.join()
        timings.append((time.perf_counter() - started) * 1000)
    return timings[1:]  # the first call starts the forkserver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    base = in_process(args.calls)
    pooled = through_pool(args.calls)
    fresh = process_per_call(max(20, args.calls // 10))
    for name, timings in (("in process (no isolation)", base), ("sandbox pool (chosen)", pooled),
                          ("a process per call (rejected)", fresh)):
        print(summary(name, timings))
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    print(f"median cost of isolation: pool +{median(pooled) - median(base):.2f} ms per call, "
          f"process per call +{median(fresh) - median(base):.2f} ms per call")


if __name__ == "__main__":
    main()
