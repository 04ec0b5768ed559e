"""Generation speed of the `local` reasoner's model: tokens per second on this machine.

Runs the shipped GGUF (and any other GGUF given with --model, to compare candidates in the same
run) the way the reasoner does: llama-cpp-python, the configured thread count, OpenMP threads
waiting passively. Prints tokens/s per model, for 1 and for TURNSTREAM_LOCAL_THREADS threads, and
each model's ratio to the shipped one.

    .venv/bin/python bench/local_model.py
    .venv/bin/python bench/local_model.py --model /path/to/gemma-3-270m-q4_k_m.gguf
"""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import _common  # noqa: F401  (puts the repository on sys.path)

PROMPT = "Once upon a time, in a small village by the sea,"
CHILD = """
import sys, time
from workers.reasoners.local import import_llama
llm = import_llama().Llama(model_path=sys.argv[1], n_ctx=512, n_threads=int(sys.argv[2]), verbose=False)
llm.create_completion("Hello", max_tokens=4, temperature=0)  # warm up
for _ in range(int(sys.argv[3])):
    start = time.monotonic()
    out = llm.create_completion(sys.argv[4], max_tokens=64, temperature=0, stop=[])
    print(out["usage"]["completion_tokens"] / (time.monotonic() - start))
"""


def tokens_per_s(model: Path, threads: int, runs: int) -> float:
    """Median over `runs` generations of 64 tokens, in a fresh process (one llama.cpp per model)."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(model), str(threads), str(runs), PROMPT],
                          capture_output=True, text=True, timeout=600, cwd=_common.REPO_ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{model.name}: {done.stderr.strip().splitlines()[-1:]}")
    return statistics.median(float(line) for line in done.stdout.split())


def main() -> None:
    from shared.settings import get_settings
    from workers.reasoners.local import shipped_model_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", default=[], help="another GGUF to compare")
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    threads = sorted({1, get_settings().local_threads})
    models = [shipped_model_path(), *(Path(m) for m in options.model)]
    baseline: dict[int, float] = {}
    for model in models:
        for n in threads:
            rate = tokens_per_s(model, n, options.runs)
            baseline.setdefault(n, rate)
            print(f"{model.name:<40} threads={n}  {rate:6.1f} tokens/s  ({rate / baseline[n]:.2f}x the shipped model)",
                  flush=True)


if __name__ == "__main__":
    main()
