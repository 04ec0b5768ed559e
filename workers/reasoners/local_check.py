"""Can the local model run on this machine? Two checks, each meant to run in a child process.

- `portable`: llama-cpp-python must be built without AMX. A build with native CPU flags turns
  AMX on where the CPU has it, and ggml's AMX backend crashes (SIGSEGV in libggml-cpu) on
  virtualized Sapphire/Granite Rapids CPUs. The Makefile builds with GGML_NATIVE=OFF; this check
  catches a wheel that pip's cache built natively (its cache key ignores CMAKE_ARGS). It refuses
  AVX-512 too: the portable build stops at AVX2, so AVX-512 on means a native build, which is how
  a native wheel is caught even on a host without AMX (where it would run, and prove nothing).
- `smoke`: load the shipped model and generate a few tokens; prints the speed.

Rule: the checks run in a child process (`python -m workers.reasoners.local_check smoke`) and the
caller reads its exit status and last line, so a crashing build is a verdict, never a dead
caller: `turnstream dev` then runs the `rules` reasoner and says why. Rejected: loading the model
inside `turnstream dev` (a SIGSEGV cannot be caught, it would take dev down with it), and
trusting `import llama_cpp` (it succeeds on a build that crashes at the first matrix product)."""

import sys
import time

NOT_PORTABLE = 3  # exit status of `portable` when the build has AMX


def system_info() -> str:
    """What the installed llama.cpp was built with. It uses no reasoner code, so that a broken
    build, not a bug in a reasoner, is what makes the Makefile rebuild it."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    return info.decode() if isinstance(info, bytes) else str(info)


NATIVE_ONLY = ("AMX", "AVX512")  # features only a native build turns on


def amx_features(info: str) -> list[str]:
    """The native-only features (AMX, AVX-512) a build reports as on, e.g. `AMX_INT8 = 1` in
    llama_print_system_info()."""
    found = []
    for part in info.replace("|", "\n").splitlines():
        name, _, value = part.partition("=")
        if any(flag in name.upper() for flag in NATIVE_ONLY) and value.strip() not in ("", "0"):
            found.append(name.strip())
    return found


def portable() -> int:
    amx = amx_features(system_info())
    if amx:
        print(f"llama-cpp-python was built with {', '.join(amx)}, a native build (AMX crashes on virtualized CPUs)")
        return NOT_PORTABLE
    print("llama-cpp-python is built portably (no AMX, no AVX-512)")
    return 0


def smoke() -> int:
    """Load the model and generate a few tokens; one line out: the speed, or why it cannot run."""
    from shared.settings import get_settings
    from workers.reasoners.local import import_llama, load_model

    import_llama()  # first, so its threads wait as the reasoner's do (see import_llama)
    amx = amx_features(system_info())
    if amx:
        print(f"llama-cpp-python was built with {', '.join(amx)}, a native build (AMX crashes on virtualized CPUs) "
              "(rebuild it: make clean && make run)")
        return NOT_PORTABLE
    try:
        llm, path = load_model(get_settings())
        start = time.monotonic()
        out = llm.create_completion("The capital of France is", max_tokens=16, temperature=0)
    except Exception as exc:  # any failure here is the verdict this check exists to report
        print(f"the local model cannot run: {exc}")
        return 1
    tokens = out["usage"]["completion_tokens"]
    rate = tokens / max(time.monotonic() - start, 1e-6)
    print(f"local model ok: {path.name}, {tokens} tokens at {rate:.0f} tokens/s")
    return 0


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "smoke"
    if command == "portable":
        return portable()
    if command == "smoke":
        return smoke()
    print(f"usage: python -m workers.reasoners.local_check [portable|smoke], not {command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
